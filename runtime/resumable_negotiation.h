// runtime/resumable_negotiation.h — connect + NBD handshake (+ TLS handshake) as a step
// machine that never blocks.
//
// Start() and Step() do all the I/O they can without waiting and then say what they wait
// for: the socket readable, the socket writable, or the end (done or failed). The caller
// waits however it likes and calls Step() again; a Step() without readiness is harmless (it
// finds EAGAIN and asks for the same again). Two drivers use it:
//   - OpenAndNegotiate (runtime/negotiation.cc): poll() between steps, against one deadline
//     and an abort eventfd — Client::Connect, the threaded reconnect, QueryExport;
//   - RingReconnector (runtime/ring_reconnector.h): an io_uring poll between steps, inside the
//     loop's turns, so caller-driven mode (threads = 0) reconnects without a thread.
// Deadlines are the driver's: the machine has no clock. stage() names what it waits for, for
// the driver's timeout message.
//
// The protocol handshake is nbd::Handshake (sans-I/O) and TLS is TlsSession (memory
// buffers), so the machine only moves bytes: a non-blocking connect (EINPROGRESS, then
// SO_ERROR), non-blocking send/recv, and ciphertext through the session. It reads only the
// bytes the handshake asks for, so nothing of the transmission phase is consumed. When it is
// done the socket is blocking again (io_uring then waits for readiness itself; see socket.h).
//
// TCP host names are resolved with getaddrinfo() in Start(), which may wait for DNS; numeric
// addresses, Unix sockets and vsock never wait.
#ifndef NBDRING_RUNTIME_RESUMABLE_NEGOTIATION_H_
#define NBDRING_RUNTIME_RESUMABLE_NEGOTIATION_H_

#include <sys/socket.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nbd/export_info.h"
#include "nbd/handshake.h"
#include "nbd/uri.h"
#include "runtime/socket.h"
#include "runtime/tls_context.h"
#include "runtime/tls_session.h"

namespace nbdring {

// Everything one connect + handshake needs.
struct NegotiationPlan {
  nbd::NbdUri address;
  nbd::HandshakeOptions handshake;
  std::shared_ptr<const TlsContext> tls;  // null: no TLS
};

struct Negotiated {
  FileDescriptor fd;
  std::unique_ptr<TlsSession> tls;  // null for plain text
  nbd::ExportInfo info;
  std::vector<nbd::ExportListing> exports;
  std::vector<std::string> meta_contexts;
};

class ResumableNegotiation {
 public:
  enum class Want { kReadable, kWritable, kDone, kFailed };

  explicit ResumableNegotiation(NegotiationPlan plan);
  ResumableNegotiation(const ResumableNegotiation&) = delete;
  ResumableNegotiation& operator=(const ResumableNegotiation&) = delete;

  // Opens a socket to the plan's address and starts connecting; or, with `connected` (a
  // connected non-blocking socket, taken over), starts the handshake on it.
  Want Start(FileDescriptor* connected = nullptr);
  // Advances as far as it can without waiting.
  Want Step();
  // Ends the attempt with `why` (the driver's timeout or abort), phrased like the machine's
  // own errors; the socket is closed. Returns the status the attempt then failed with.
  absl::Status Abandon(absl::Status why);

  // The socket to wait on (-1 before Start and after the end).
  int fd() const { return fd_.get(); }
  // What the machine waits for, e.g. "connecting to /tmp/s.sock", "in the TLS handshake".
  const std::string& stage() const { return stage_; }
  // After kFailed.
  const absl::Status& status() const { return status_; }
  // After kDone: the socket (blocking again), the TLS session and what was negotiated.
  Negotiated Take();

 private:
  enum class Phase { kIdle, kConnecting, kHandshake, kDone, kFailed };
  struct Address {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family = 0;
  };

  Want Fail(absl::Status status);
  Want ConnectNext();     // the next address, from addresses_[next_address_]
  Want FinishConnect();   // a connect in progress: has it ended?
  Want PumpHandshake();
  // Sends out_; false when the socket is full (then the wait is for writable) or on failure.
  bool Flush(Want* want);
  // Plain: up to `wanted` bytes of the handshake; TLS: opened plaintext. 0 with *want set:
  // nothing now.
  size_t Receive(uint8_t* buffer, size_t wanted, Want* want);
  // Ciphertext from the socket into cipher_input_; false with *want set when none now.
  bool ReceiveCiphertext(Want* want, bool in_tls_handshake);

  NegotiationPlan plan_;
  nbd::Handshake handshake_;
  Phase phase_ = Phase::kIdle;
  std::string name_;  // the address as errors name it
  std::vector<Address> addresses_;
  size_t next_address_ = 0;
  absl::Status last_connect_error_;
  FileDescriptor fd_;
  std::string stage_;
  absl::Status status_;

  std::unique_ptr<TlsSession> tls_;
  bool tls_handshaking_ = false;
  std::vector<uint8_t> out_;  // bytes for the socket (plain, or sealed records)
  size_t out_sent_ = 0;
  std::vector<uint8_t> sealed_;
  std::vector<uint8_t> receive_buffer_;
  std::vector<uint8_t> cipher_buffer_;
  absl::Span<const uint8_t> cipher_input_;  // ciphertext received, not yet taken by tls_
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RESUMABLE_NEGOTIATION_H_
