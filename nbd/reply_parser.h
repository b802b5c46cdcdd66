// nbd/reply_parser.h — incremental parser for transmission-phase replies.
//
// Sans-I/O: the caller feeds whatever bytes arrived; the parser reports one event at a time and
// says how many bytes it consumed. Any split of the byte stream yields the same events.
//
// The three framings ("Simple reply message", "Structured reply chunk message", and the
// extended headers of NBD_OPT_EXTENDED_HEADERS) are chosen by the negotiated ReplyMode.
//
// Zero-copy reads: read payload bytes are never copied by the parser. A kReadData event points
// into the caller's input and says at which offset of the request's buffer the bytes belong.
// A caller that wants to receive payload straight into that buffer asks payload_target()
// while the parser sits inside a payload, receives up to `remaining` bytes there itself, and
// reports them with PayloadReceivedDirectly().
//
// Errors. Next() returns a non-OK status only when the byte stream can no longer be trusted
// (bad magic, cookie not in flight, malformed chunk framing, an unknown non-error chunk type,
// a chunk beyond the size caps): the caller must fail every request on the connection with
// that status and close it. Violations that leave the framing intact (a data chunk outside
// the request, overlapping chunks, a read not fully covered, an unknown meta context id, ...)
// fail only the affected request: its kDone event carries the error, and bytes that would have
// gone to the caller's buffer are skipped instead. Every message names the rule and the values.
// Protocol violations (fatal or not) are absl::DataLossError; errors the server itself reports
// (simple reply error, error chunks) come from nbd::NbdErrorToStatus.
#ifndef NBDRING_NBD_REPLY_PARSER_H_
#define NBDRING_NBD_REPLY_PARSER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nbd/export_info.h"
#include "nbd/wire.h"

namespace nbd {

// The parser's per-request bookkeeping while chunks of a structured reply arrive. Lives in
// the caller's in-flight slot (no allocation per request); reset it when the request is sent.
struct ReplyProgress {
  // Byte ranges of the request already described by data/hole chunks, relative to the request
  // offset, kept sorted and merged (in-order chunks keep this at one entry).
  struct Range {
    uint64_t begin;
    uint64_t end;
  };
  absl::InlinedVector<Range, 2> covered;
  uint64_t bytes_covered = 0;
  uint32_t content_chunks = 0;        // data + hole chunks seen (DF allows at most one)
  uint32_t block_status_chunks = 0;
  absl::Status error;                 // first error (server's error chunk or a violation)

  void Reset() {
    covered.clear();
    bytes_covered = 0;
    content_chunks = 0;
    block_status_chunks = 0;
    error = absl::OkStatus();
  }
};

// What the parser must know about a request in flight, supplied by the caller.
struct InflightRequest {
  Command command = Command::kRead;
  uint16_t flags = 0;  // kCmdFlag* as sent
  uint64_t offset = 0;
  uint64_t length = 0;
  ReplyProgress progress;
};

// Looks a cookie up among the requests in flight on this connection.
class RequestLookup {
 public:
  virtual ~RequestLookup() = default;
  // nullptr when no request with that cookie is in flight (a fatal server error).
  virtual InflightRequest* Find(uint64_t cookie) = 0;
};

struct ReplyEvent {
  enum class Kind : uint8_t {
    kNone,         // nothing complete yet: feed more bytes
    kReadData,     // `data` belongs at `buffer_offset` (relative to the request's offset)
    kReadHole,     // `length` bytes of zeroes at `buffer_offset`
    kBlockStatus,  // `extents` for meta context `context_id`
    kDone,         // the request is finished with `status`; the cookie may be reused now
  };
  Kind kind = Kind::kNone;
  uint64_t cookie = 0;
  InflightRequest* request = nullptr;  // as returned by RequestLookup::Find
  uint64_t buffer_offset = 0;
  uint64_t length = 0;
  absl::Span<const uint8_t> data;      // into the input of this Next() call
  uint32_t context_id = 0;
  absl::Span<const Extent> extents;    // valid until the next call on the parser
  absl::Status status;
};

struct ReplyParserOptions {
  ReplyMode mode = ReplyMode::kSimple;
  // Meta context ids negotiated with NBD_OPT_SET_META_CONTEXT; BLOCK_STATUS chunks for any
  // other id fail their request.
  std::vector<uint32_t> meta_context_ids;
  // Cap on payloads the parser must buffer (error and block-status chunks): a server cannot
  // make the client allocate more than this per chunk.
  uint64_t max_buffered_chunk_bytes = 1u << 20;
};

class ReplyParser {
 public:
  ReplyParser(ReplyParserOptions options, RequestLookup* lookup);

  // Consumes a prefix of `input` (possibly all of it, possibly none) and fills `event`
  // (kind kNone when no event is complete). Call again with the rest until it consumes
  // nothing and reports kNone. May be called with empty input to collect an event that
  // needs no more bytes (e.g. kDone after PayloadReceivedDirectly finished a payload).
  absl::StatusOr<size_t> Next(absl::Span<const uint8_t> input, ReplyEvent* event);

  // While the parser waits for read payload bytes that are going to the caller's buffer.
  struct PayloadTarget {
    InflightRequest* request = nullptr;
    uint64_t cookie = 0;
    uint64_t buffer_offset = 0;  // relative to the request's offset
    uint64_t remaining = 0;      // payload bytes of this chunk still to come
  };
  // True (and `*target` filled) when the next bytes of the stream are read payload for the
  // caller's buffer (never while bytes are being skipped after a violation).
  bool payload_target(PayloadTarget* target) const;
  // The caller placed `n` (<= remaining) payload bytes at the target itself.
  void PayloadReceivedDirectly(uint64_t n);

  // True between messages: no partial header or payload is pending.
  bool at_message_boundary() const;

 private:
  // Private members may be reshaped freely by the implementation.
  enum class State : uint8_t {
    kHeader,       // collecting a reply/chunk header into header_
    kChunkPrefix,  // collecting a small fixed chunk payload part into prefix_
    kPayload,      // read payload bytes going to the caller's buffer
    kSkip,         // payload bytes to discard
    kBuffered,     // collecting a whole chunk payload into buffer_ (error, block status)
    kEmitDone,     // a kDone event is ready to be reported
  };
  // A BLOCK_STATUS chunk already seen for (cookie, context id): each context may answer once.
  struct SeenContext {
    uint64_t cookie;
    uint32_t context_id;
  };

  absl::Status Fatal(absl::Status status);
  absl::Status CheckMagic();
  absl::Status StartMessage();
  absl::Status StartSimpleReply(uint32_t error, uint64_t cookie);
  absl::Status StartChunk(uint16_t flags, uint16_t type, uint64_t cookie, bool has_offset,
                          uint64_t reply_offset, uint64_t length);
  absl::Status FinishPrefix(ReplyEvent* event);
  absl::Status FinishBuffered(ReplyEvent* event);
  absl::Status FinishErrorChunk();
  absl::Status FinishBlockStatus(ReplyEvent* event);
  bool AcceptBlockStatus(uint32_t context_id);
  bool AcceptContent(const char* chunk_name, uint64_t offset, uint64_t size,
                     uint64_t* buffer_offset);
  void FailRequest(absl::Status status);
  void SkipRestOfChunk(uint64_t bytes);
  void FinishChunk();
  void EmitDone(ReplyEvent* event);

  ReplyParserOptions options_;
  RequestLookup* lookup_;
  absl::Status fatal_;  // once set, every Next() returns it

  State state_ = State::kHeader;
  uint8_t header_[kExtendedReplyHeaderSize] = {};
  size_t header_size_ = 0;    // bytes of header_ collected
  size_t header_needed_ = 4;  // bytes of header_ needed before the next decision
  uint8_t prefix_[12] = {};   // OFFSET_DATA offset, OFFSET_HOLE payload, error-chunk prefix
  size_t prefix_size_ = 0;
  size_t prefix_needed_ = 0;
  // The message (simple reply or chunk) being parsed.
  uint64_t cookie_ = 0;
  InflightRequest* request_ = nullptr;
  uint16_t chunk_type_ = 0;
  uint64_t chunk_length_ = 0;
  uint64_t chunk_remaining_ = 0;  // payload bytes of the chunk not yet consumed
  uint64_t payload_offset_ = 0;   // kPayload: current buffer offset
  bool done_after_chunk_ = false;
  bool structured_reply_ = false;  // the request was answered with chunks, not a simple reply
  std::vector<uint8_t> buffer_;    // kBuffered, capacity reused
  std::vector<Extent> extents_;    // decoded extents, capacity reused
  absl::InlinedVector<SeenContext, 4> block_status_seen_;
};

}  // namespace nbd

#endif  // NBDRING_NBD_REPLY_PARSER_H_
