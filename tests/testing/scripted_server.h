// tests/testing/scripted_server.h — a misbehaving NBD server for fault tests, driven by a script.
//
// A ScriptedServer listens on a Unix socket in a private /tmp directory, accepts a connection
// and runs a list of actions (its script) on it, in order, on a thread of its own:
//
//   ScriptedServer server({
//       Greet(),
//       ExpectClientFlags(),
//       HandleOptionsUntilGo({.size = 1 << 20}),
//       ExpectRequests(2, Command::kRead),
//       ReplyReadPattern(1),                       // answer the second request first
//       ReplyError(0, kEIo, "medium error"),
//       ExpectDisconnect(),
//   });
//   ... connect a client to server.uri() ...
//   EXPECT_TRUE(server.Wait().ok());
//
// Several connections (multi-conn clients): the i-th connection accepted runs script_for(i),
// each on its own thread, so each can, e.g., assign its own meta context ids:
//
//   ScriptedServer server(2, [](int connection) {
//     ScriptedExport export_config{.meta_contexts = {{7u + connection, "base:allocation"}}};
//     export_config.transmission_flags |= kFlagCanMultiConn;
//     return std::vector<Action>{Greet(), ExpectClientFlags(),
//                                HandleOptionsUntilGo(export_config), ...};
//   });
//
// Requests are numbered per connection in the order they arrive; reply actions name them by
// that index and take the cookie, offset and length from the recorded request, so correct
// replies are one call and malformed ones (ReplyChunk, SendRaw) are spelled out field by field.
//
// Contract:
//  * A script stops at the first action that fails (the client did something the script did
//    not expect, or the client closed early). When a script ends, for whatever reason, the
//    server closes its connection. Wait() returns OK once every script succeeded, else the
//    first failure, naming the action (and, with several connections, the connection).
//  * Once all its connections are accepted the server stops listening: further connection
//    attempts are refused instead of left waiting.
//  * Nothing blocks for ever: every receive waits at most `io_timeout` (Stall() at most
//    `stall_limit`), and the destructor interrupts whatever the threads are doing and joins
//    them.
//  * Sends never raise SIGPIPE; a send to a client that has gone is a failed action.
//  * Everything a server sends is built with nbd/wire.h constants and big-endian helpers; the
//    byte builders below are public so tests can compose malformed messages from them.
#ifndef NBDRING_TESTS_TESTING_SCRIPTED_SERVER_H_
#define NBDRING_TESTS_TESTING_SCRIPTED_SERVER_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "nbd/export_info.h"
#include "nbd/reply_parser.h"
#include "nbd/request.h"
#include "nbd/wire.h"
#include "tests/testing/server_process.h"
#include "tests/testing/watchdog.h"  // Watchdog, which fault tests use with the server

namespace nbd::testing {

// The export HandleOptionsUntilGo() offers. Options are answered the way a correct server
// would; only NBD_OPT_EXTENDED_HEADERS and NBD_OPT_STARTTLS are always refused (ERR_UNSUP).
struct ScriptedExport {
  uint64_t size = 1 << 20;
  uint16_t transmission_flags = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendTrim |
                                kFlagSendWriteZeroes | kFlagSendDf;
  // ACK NBD_OPT_STRUCTURED_REPLY (otherwise NBD_REP_ERR_UNSUP: replies stay simple).
  bool structured_replies = true;
  // Contexts NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT may select, matched by exact name.
  std::vector<MetaContext> meta_contexts;
  // Sent as NBD_INFO_BLOCK_SIZE when the client asks for it and `advertised` is set.
  BlockSizeConstraints block_size;
};

// A transmission request as the server received it.
struct RecordedRequest {
  RequestHeader header;
  std::vector<uint8_t> payload;  // NBD_CMD_WRITE data
};

// A negotiation option as the server received it.
struct RecordedOption {
  uint32_t option = 0;
  std::vector<uint8_t> data;
};

struct ScriptedServerOptions {
  // Longest wait for any one thing from the client (connection, option, request). Keep it
  // longer than the client's own timeouts so the client's reaction is what a test observes.
  absl::Duration io_timeout = absl::Seconds(10);
  // Longest Stall() wait (ExpectClose() waits `io_timeout`).
  absl::Duration stall_limit = absl::Seconds(30);
};

// The connection a script runs on. Actions get it; custom actions may use all of it.
class ScriptedConnection {
 public:
  ScriptedConnection(int fd, int stop_fd, const std::atomic<bool>* stopping,
                     const ScriptedServerOptions& server_options);
  ~ScriptedConnection();
  ScriptedConnection(const ScriptedConnection&) = delete;
  ScriptedConnection& operator=(const ScriptedConnection&) = delete;

  // Sends all of `bytes` (one byte per send() while trickling).
  absl::Status Send(absl::Span<const uint8_t> bytes);
  // Receives exactly `size` bytes. `what` names them for the error message.
  absl::Status Receive(size_t size, std::vector<uint8_t>* out, absl::string_view what);
  // Discards whatever arrives until the client closes its end (OK), `limit` passes or the
  // server stops (errors). `received` (optional) collects the discarded bytes.
  absl::Status DrainUntilClosed(absl::Duration limit, std::vector<uint8_t>* received = nullptr);
  void Shutdown();
  absl::Duration io_timeout() const { return server_options_.io_timeout; }
  absl::Duration stall_limit() const { return server_options_.stall_limit; }

  // After `bytes` more bytes have been sent, the connection is shut down (mid-message, if
  // that is where the count ends); later sends fail.
  void CutAfter(uint64_t bytes) { cut_after_ = bytes; }

  // Every later Send() goes out one byte per send() call, `delay` apart.
  void set_trickle(absl::Duration delay) {
    trickling_ = true;
    trickle_delay_ = delay;
  }

  // Negotiated state, set by the handshake actions.
  ReplyMode reply_mode() const { return reply_mode_; }
  void set_reply_mode(ReplyMode mode) { reply_mode_ = mode; }
  bool no_zeroes() const { return no_zeroes_; }
  void set_no_zeroes(bool no_zeroes) { no_zeroes_ = no_zeroes; }

  std::vector<RecordedRequest>& requests() { return requests_; }
  std::vector<RecordedOption>& options() { return options_; }
  // The request that arrived `index`-th (0-based), or an error naming how many arrived.
  absl::StatusOr<const RecordedRequest*> request(size_t index) const;

 private:
  // Waits until `fd_` is readable; errors on timeout (naming `limit`) or stop.
  absl::Status WaitReadable(absl::Time deadline, absl::Duration limit, absl::string_view what);

  int fd_;
  int stop_fd_;
  const std::atomic<bool>* stopping_;
  ScriptedServerOptions server_options_;
  std::optional<uint64_t> cut_after_;
  bool cut_ = false;
  bool trickling_ = false;
  absl::Duration trickle_delay_;
  ReplyMode reply_mode_ = ReplyMode::kSimple;
  bool no_zeroes_ = false;
  std::vector<RecordedRequest> requests_;
  std::vector<RecordedOption> options_;
};

struct Action {
  std::string description;  // e.g. "ExpectRequest(NBD_CMD_READ)", used in failure messages
  std::function<absl::Status(ScriptedConnection&)> run;
};

class ScriptedServer {
 public:
  // One connection, running `script`.
  explicit ScriptedServer(std::vector<Action> script, ScriptedServerOptions options = {});
  // `connections` connections; the one accepted `connection_index`-th (0-based, in accept
  // order) runs script_for(connection_index) on its own thread. script_for is called for
  // every index before the constructor returns. Each accept waits at most io_timeout (from
  // the start, then from the previous accept).
  ScriptedServer(int connections,
                 const std::function<std::vector<Action>(int connection_index)>& script_for,
                 ScriptedServerOptions options = {});
  ~ScriptedServer();  // stops every script wherever it is and joins the threads
  ScriptedServer(const ScriptedServer&) = delete;
  ScriptedServer& operator=(const ScriptedServer&) = delete;

  // nbd+unix:///?socket=<path> (the default export).
  std::string uri() const;
  const std::string& socket_path() const { return socket_path_; }

  // Waits for every script to end and returns the outcome: OK when every action of every
  // script succeeded, else the first failure in time ("action 4 ExpectRequest(NBD_CMD_READ):
  // ...", prefixed "connection 1: " when there are several), or DeadlineExceeded when a
  // script is still running after `timeout`.
  absl::Status Wait(absl::Duration timeout = absl::Seconds(30));
  // What the script of connection `connection_index` recorded (empty for a connection never
  // accepted); complete once Wait() returned something other than DeadlineExceeded.
  std::vector<RecordedRequest> requests(int connection_index = 0) const;
  std::vector<RecordedOption> options(int connection_index = 0) const;

 private:
  struct Recorded {
    std::vector<RecordedRequest> requests;
    std::vector<RecordedOption> options;
  };

  void Run();
  absl::Status Setup();
  absl::StatusOr<int> Accept(absl::Time deadline);
  void RunScript(int connection_index, int fd);
  // Keeps `status` as the result if it is the first failure; holding mutex_.
  void NoteFailureLocked(int connection_index, const absl::Status& status);

  std::vector<std::vector<Action>> scripts_;  // one per connection
  ScriptedServerOptions options_;
  std::unique_ptr<TempDir> dir_;
  std::string socket_path_;
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::atomic<bool> stopping_{false};
  std::thread thread_;  // accepts, starts a thread per connection and joins them

  mutable std::mutex mutex_;
  std::condition_variable finished_changed_;
  bool finished_ = false;
  absl::Status result_;
  std::vector<Recorded> recorded_;  // per connection
};

// --- Byte builders ---------------------------------------------------------------------------

// NBDMAGIC, IHAVEOPT, handshake flags.
std::vector<uint8_t> GreetingBytes(uint16_t handshake_flags);
// Option reply header (magic, option, type, length = payload size) + payload.
std::vector<uint8_t> OptionReplyBytes(uint32_t option, uint32_t reply_type,
                                      absl::Span<const uint8_t> payload = {});
std::vector<uint8_t> SimpleReplyBytes(uint32_t error, uint64_t cookie,
                                      absl::Span<const uint8_t> payload = {});
// A structured reply chunk header announcing `length` payload bytes (the payload follows
// separately), for chunks that lie about their length or end early.
std::vector<uint8_t> ChunkHeaderBytes(uint16_t flags, uint16_t type, uint64_t cookie,
                                      uint32_t length);
// Header with length = payload size, then the payload.
std::vector<uint8_t> ChunkBytes(uint16_t flags, uint16_t type, uint64_t cookie,
                                absl::Span<const uint8_t> payload);
// Payload of NBD_REPLY_TYPE_ERROR: error, message length, message (+ offset when given, for
// NBD_REPLY_TYPE_ERROR_OFFSET).
std::vector<uint8_t> ErrorChunkPayload(uint32_t error, absl::string_view message,
                                       std::optional<uint64_t> offset = std::nullopt);

// The bytes ReplyReadPattern sends: a function of the absolute export offset, never zero, so a
// test can check any range of a buffer no matter in which order requests arrived.
uint8_t PatternByte(uint64_t export_offset);
std::vector<uint8_t> PatternBytes(uint64_t export_offset, size_t length);

// --- Handshake actions -----------------------------------------------------------------------

Action Greet(uint16_t handshake_flags = kFlagFixedNewstyle | kFlagNoZeroes);
// Reads the client's 32-bit flags; fails unless they equal `expected` when given.
Action ExpectClientFlags(std::optional<uint32_t> expected = std::nullopt);
// Reads one option; fails unless it is `option`.
Action ExpectOption(Option option);
Action SendOptionReply(Option option, OptionReply reply, std::vector<uint8_t> payload = {});
// Answers options as a correct server offering `export_config` would, up to and including
// NBD_OPT_GO (or NBD_OPT_EXPORT_NAME), then switches to the transmission phase.
Action HandleOptionsUntilGo(ScriptedExport export_config = {});
// The same, but stops when `option` arrives: it is recorded and left unanswered, so the next
// actions can answer it wrongly.
Action HandleOptionsUntil(Option option, ScriptedExport export_config = {});

// --- Transmission actions --------------------------------------------------------------------

// Reads one request (and a write's payload) and records it; fails unless it is `command`.
Action ExpectRequest(Command command);
Action ExpectRequests(int count, Command command);
// Reads only a request's header, leaving a write's payload unread (the client's send stalls
// once the socket buffers fill); ReceiveWritePayload() reads it later.
Action ExpectRequestHeader(Command command);
Action ReceiveWritePayload(size_t request_index);
// Expects NBD_CMD_DISC, then the client closing its end.
Action ExpectDisconnect();

// Replies to the request recorded at `request_index`:
Action ReplySimple(size_t request_index, uint32_t error, std::vector<uint8_t> payload = {});
// Any chunk, fields as given; length is the payload size.
Action ReplyChunk(size_t request_index, uint16_t flags, uint16_t type,
                  std::vector<uint8_t> payload);
// A chunk header only (announcing `length` bytes), for payloads sent with SendRaw.
Action ReplyChunkHeader(size_t request_index, uint16_t flags, uint16_t type, uint32_t length);
// NBD_REPLY_TYPE_OFFSET_DATA of `data` at `offset_in_request` (relative to the request).
Action ReplyReadData(size_t request_index, uint64_t offset_in_request, std::vector<uint8_t> data,
                     bool done);
// The whole read, PatternBytes of its range: a simple reply in simple mode, one OFFSET_DATA
// chunk with DONE otherwise.
Action ReplyReadPattern(size_t request_index);
// One OFFSET_DATA chunk of PatternBytes for part of the request.
Action ReplyReadPattern(size_t request_index, uint64_t offset_in_request, uint64_t length,
                        bool done);
Action ReplyHole(size_t request_index, uint64_t offset_in_request, uint32_t length, bool done);
// NBD_REPLY_TYPE_ERROR (structured) or a simple reply with `error` (simple mode; the message
// is then dropped).
Action ReplyError(size_t request_index, uint32_t error, std::string message = "", bool done = true);
Action ReplyBlockStatus(size_t request_index, uint32_t context_id, std::vector<Extent> extents,
                        bool done);
// NBD_REPLY_TYPE_NONE with DONE (structured) or a simple reply with error 0.
Action ReplyNone(size_t request_index);

// --- Raw control -------------------------------------------------------------------------------

Action SendRaw(std::vector<uint8_t> bytes);
Action SendByteByByte(std::vector<uint8_t> bytes, absl::Duration delay = absl::Microseconds(200));
// From here on every send goes one byte per send() call, `delay` apart.
Action Trickle(absl::Duration delay = absl::Microseconds(100));
Action Sleep(absl::Duration duration);
// Shuts the connection down once `bytes` more bytes have been sent, e.g. in the middle of the
// payload the next action sends; that action still succeeds.
Action CutAfter(uint64_t bytes);
// Closes the connection now (the script should end here).
Action Close();
// Sends nothing and waits until the client closes (OK) or the server is destroyed.
Action Stall();
// Waits for the client to drop the connection (whatever it sends first is ignored).
Action ExpectClose();
Action Custom(std::string description, std::function<absl::Status(ScriptedConnection&)> run);

}  // namespace nbd::testing

#endif  // NBDRING_TESTS_TESTING_SCRIPTED_SERVER_H_
