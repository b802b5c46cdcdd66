// nbd/handshake.h — the client side of NBD negotiation as a state machine (sans-I/O).
//
// Drive it like this (the runtime and the tests do exactly this):
//
//   nbd::Handshake handshake(options);
//   while (handshake.state() == nbd::Handshake::State::kRunning) {
//     send(handshake.output()); handshake.ConsumeOutput(bytes_sent);
//     read at least handshake.bytes_wanted() bytes; handshake.Feed(bytes) -> consumed
//   }
//   // kStartTls: run TLS on the socket, call TlsEstablished(), keep driving.
//   // kDone: send the remaining output() (e.g. NBD_OPT_ABORT), then use export_info().
//
// Supports oldstyle and (fixed) newstyle negotiation, NO_ZEROES, NBD_OPT_STARTTLS (as a state;
// the TLS session itself belongs to the I/O layer), NBD_OPT_EXTENDED_HEADERS, falling back to
// NBD_OPT_STRUCTURED_REPLY, falling back to simple replies; NBD_OPT_SET_META_CONTEXT; NBD_OPT_GO
// with NBD_INFO_NAME/DESCRIPTION/BLOCK_SIZE, falling back to NBD_OPT_EXPORT_NAME when the server
// answers NBD_REP_ERR_UNSUP; NBD_OPT_INFO, NBD_OPT_LIST and NBD_OPT_LIST_META_CONTEXT followed by
// NBD_OPT_ABORT. Server replies are validated before use and bounded in size; every failure is
// an absl::Status that names the option, the reply and what was wrong.
#ifndef NBDRING_NBD_HANDSHAKE_H_
#define NBDRING_NBD_HANDSHAKE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nbd/export_info.h"
#include "nbd/wire.h"

namespace nbd {

struct HandshakeOptions {
  enum class Goal {
    kTransmission,      // NBD_OPT_GO (or EXPORT_NAME): end in the transmission phase
    kInfo,              // NBD_OPT_INFO, then NBD_OPT_ABORT: learn about the export only
    kList,              // NBD_OPT_LIST, then NBD_OPT_ABORT
    kListMetaContexts,  // NBD_OPT_LIST_META_CONTEXT for `meta_contexts`, then NBD_OPT_ABORT
  };
  enum class Tls { kDisable, kAllow, kRequire };

  Goal goal = Goal::kTransmission;
  std::string export_name;  // "" is the server's default export
  bool structured_replies = true;
  bool extended_headers = false;
  // Queries for SET_META_CONTEXT / LIST_META_CONTEXT, e.g. "base:allocation",
  // "qemu:dirty-bitmap:NAME". Ignored (none negotiated) when replies stay simple.
  std::vector<std::string> meta_contexts;
  // Ask for NBD_INFO_BLOCK_SIZE, promising to honour the server's constraints.
  bool request_block_size = true;
  Tls tls = Tls::kDisable;
  // Caps on what a server can make the client buffer.
  uint32_t max_option_reply_bytes = 16 * 1024;
  uint32_t max_replies_per_option = 100000;
};

class Handshake {
 public:
  enum class State {
    kRunning,   // exchange bytes
    kStartTls,  // STARTTLS was acknowledged: establish TLS, then call TlsEstablished()
    kDone,      // negotiation over; results are available (send any remaining output first)
    kFailed,    // a Feed() returned an error; the connection must be dropped
  };

  explicit Handshake(HandshakeOptions options);

  State state() const;
  // Bytes to send to the server now. Valid until the next non-const call.
  absl::Span<const uint8_t> output() const;
  void ConsumeOutput(size_t bytes_sent);
  // The smallest number of further bytes the machine needs before it can progress; the I/O
  // layer may read exactly this much so it never reads past the end of the handshake.
  size_t bytes_wanted() const;
  // Consumes server bytes and returns how many were used (all of them while running; fewer
  // once the handshake completes, whose rest belongs to the transmission phase, or on
  // reaching kStartTls, whose rest belongs to the TLS handshake).
  absl::StatusOr<size_t> Feed(absl::Span<const uint8_t> input);
  void TlsEstablished();

  // Results, valid in kDone.
  const ExportInfo& export_info() const { return info_; }
  const std::vector<ExportListing>& exports() const { return exports_; }  // kList
  const std::vector<std::string>& listed_meta_contexts() const { return listed_contexts_; }
  bool tls_active() const { return tls_active_; }

 private:
  // What the next complete unit of server bytes is.
  enum class Expect {
    kGreeting,             // INIT_PASSWD and the second magic (16 bytes)
    kOldstyleRest,         // size, flags, 124 zero bytes
    kHandshakeFlags,       // 16 bits
    kOptionReplyHeader,    // magic, option, reply type, length (20 bytes)
    kOptionReplyPayload,   // the header's length
    kExportNameReply,      // size, transmission flags [, 124 zero bytes]
  };

  absl::Status ProcessUnit(absl::Span<const uint8_t> unit);
  absl::Status OnGreeting(absl::Span<const uint8_t> unit);
  absl::Status OnOldstyleGreeting(absl::Span<const uint8_t> unit);
  absl::Status OnHandshakeFlags(absl::Span<const uint8_t> unit);
  absl::Status OnOptionReplyHeader(absl::Span<const uint8_t> unit);
  absl::Status OnOptionReply(uint32_t reply, absl::Span<const uint8_t> payload);
  absl::Status OnErrorReply(uint32_t reply, absl::Span<const uint8_t> payload);
  absl::Status OnExportInfoReply(uint32_t reply, absl::Span<const uint8_t> payload);
  absl::Status OnInfo(absl::Span<const uint8_t> payload);
  absl::Status OnExportNameReply(absl::Span<const uint8_t> unit);
  absl::Status SendNextOption();
  void SendOption(Option option, absl::Span<const uint8_t> data);
  void SendExportName();
  void ExpectBytes(Expect what, size_t size);
  void AwaitNextReply();
  void Finish(bool send_abort);
  absl::Status Fail(absl::Status status);

  HandshakeOptions options_;
  ExportInfo info_;
  std::vector<ExportListing> exports_;
  std::vector<std::string> listed_contexts_;
  bool tls_active_ = false;

  State state_ = State::kRunning;
  absl::Status failure_;  // why the machine is kFailed (or will be at the first Feed)
  std::vector<uint8_t> output_;
  size_t output_sent_ = 0;
  Expect expect_ = Expect::kGreeting;
  size_t unit_size_ = 0;        // bytes in the unit being collected
  std::vector<uint8_t> unit_;   // the part of it received so far
  bool no_zeroes_ = false;  // the server offered NBD_FLAG_NO_ZEROES (and the client took it)
  Option pending_option_ = Option::kAbort;
  uint32_t pending_reply_ = 0;  // reply type whose payload is being collected
  uint32_t replies_to_pending_option_ = 0;
  bool starttls_sent_ = false;
  bool extended_headers_sent_ = false;
  bool structured_reply_sent_ = false;
  bool set_meta_context_sent_ = false;
  bool export_info_received_ = false;
  std::vector<MetaContext> offered_contexts_;  // NBD_REP_META_CONTEXT before the ACK
};

}  // namespace nbd

#endif  // NBDRING_NBD_HANDSHAKE_H_
