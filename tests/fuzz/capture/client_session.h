// tests/fuzz/capture/client_session.h — the one client conversation that both
// //tests/fuzz:client_fuzzer and the capture tool (capture.cc) hold with a server.
//
// A server's byte stream only makes sense as an answer to what the client said, so the seeds
// the capture tool records from real servers are useful to the fuzzer only if the fuzzer's
// client says exactly the same: the same options (SessionOptions), the same handshake
// (SessionHandshakeOptions mirrors what Client::Connect derives from them) and the same
// requests in the same order from one thread (SessionRequests), so that the client hands
// out the same cookies.
//
// SessionRequests also checks the client's promises that a fuzzed server must not be able
// to break: every callback runs exactly once and in time, holes and extents arrive only for the
// requests they belong to and inside their range. It reports a broken promise as an error;
// the fuzzer turns that into a crash.
#ifndef NBDRING_TESTS_FUZZ_CAPTURE_CLIENT_SESSION_H_
#define NBDRING_TESTS_FUZZ_CAPTURE_CLIENT_SESSION_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "nbd/handshake.h"
#include "nbdring/client.h"

namespace nbdring::fuzzing {

// One connection, one ring thread, base:allocation, structured replies, 1 s timeouts.
ClientOptions SessionOptions(const std::string& uri);

// The nbd::Handshake options Client::Connect uses for SessionOptions (see MakeHandshakeOptions
// in runtime/client.cc; keep the two in step).
nbd::HandshakeOptions SessionHandshakeOptions();

// Where a server byte stream's handshake ends: how many server bytes nbd::Handshake consumes
// before it is done, and how many bytes the client sends in the meantime. Nothing when the
// stream fails or ends before the handshake is done.
struct HandshakeSplit {
  size_t server_bytes = 0;
  size_t client_bytes = 0;
  nbd::ExportInfo info;
};
std::optional<HandshakeSplit> SplitHandshake(absl::Span<const uint8_t> server_stream);

// The session's requests: reads, a write, block status, flush, write-zeroes and trim of a few
// hundred bytes to 32 KiB within the first 64 KiB of the export. Keep the object alive until
// the client is destroyed: a late second callback must find it.
class SessionRequests {
 public:
  SessionRequests();
  ~SessionRequests();

  // Issues the requests, calls `all_sent` once each request the export accepts is on the wire
  // (or everything has completed, or `timeout` passed), and waits for every callback. An error
  // names the broken promise: a callback that did not run within `timeout` or ran twice, a
  // hole or extents where there should be none.
  absl::Status Run(Client& client, absl::FunctionRef<void()> all_sent, absl::Duration timeout);
  // After the client is gone: still exactly one callback per request, no other broken promise.
  absl::Status Check() const;
  // One line per request: the command, its range and how it completed.
  std::string Summary() const;

  struct Request;

 private:
  static void OnComplete(Operation* operation, const absl::Status& status);
  static void OnHole(Operation* operation, uint64_t offset_in_request, uint64_t length);
  static void OnExtents(Operation* operation, uint32_t context_id,
                        absl::Span<const Extent> extents);
  void BreakPromise(std::string what);

  nbd::ExportInfo info_;
  std::vector<std::unique_ptr<Request>> requests_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  size_t completed_ = 0;
  std::string broken_promise_;  // the first one
};

}  // namespace nbdring::fuzzing

#endif  // NBDRING_TESTS_FUZZ_CAPTURE_CLIENT_SESSION_H_
