// Servers that die or stop answering with every in-flight slot of every connection busy:
//   * nbdkit killed with SIGKILL while 256 requests wait in its delay filter: each callback
//     runs exactly once with UnavailableError, later requests fail fast, and the client is
//     destroyed cleanly;
//   * a burst of 256 requests goes out at once on four connections of 64 slots (design.md:
//     each request goes to the connection with the fewest outstanding bytes), and the kill
//     fails whatever was sent or queued;
//   * a server that stops answering (SIGSTOP, or a delay filter sleeping for 1000 s) with
//     request_timeout = 1 s: every in-flight request ends with DeadlineExceededError a little
//     after one second.
// A watchdog ends the process if any step hangs, naming the step, so a hang is a fast failure
// rather than a Bazel timeout.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"
#include "tests/testing/watchdog.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::Watchdog;
using ::nbdring::testing::CompletionTracker;
using ::nbdring::testing::WaitUntil;

constexpr int kConnections = 4;
constexpr uint32_t kInflightLimit = 64;
constexpr int kRequests = kConnections * kInflightLimit;  // every slot of every connection
// Small enough that 64 writes fit in a Unix socket's buffer even when the server reads none.
constexpr uint64_t kRequestBytes = 1024;
constexpr absl::Duration kTestDeadline = absl::Seconds(20);

// A caller-owned request with its own buffer; a CompletionTracker counts its completions.
struct TrackedRequest : Operation {
  std::vector<uint8_t> data = std::vector<uint8_t>(kRequestBytes, 0x5a);
};

// `count` requests, reads and writes alternately, each at its own offset.
std::vector<std::unique_ptr<TrackedRequest>> MakeRequests(int count) {
  std::vector<std::unique_ptr<TrackedRequest>> requests;
  for (int i = 0; i < count; ++i) {
    auto request = std::make_unique<TrackedRequest>();
    request->command = i % 2 == 0 ? Command::kRead : Command::kWrite;
    request->offset = static_cast<uint64_t>(i) * kRequestBytes;
    request->length = kRequestBytes;
    request->buffer = request->data.data();
    requests.push_back(std::move(request));
  }
  return requests;
}

// The end of what the server printed, to explain a failure.
std::string ServerLogTail(ServerProcess& server) {
  std::ifstream log(server.dir().File("server.log"));
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  constexpr size_t kTail = 4000;
  return text.size() > kTail ? text.substr(text.size() - kTail) : text;
}

absl::StatusOr<std::unique_ptr<Client>> ConnectFourWays(const ServerProcess& server,
                                                        absl::Duration request_timeout) {
  ClientOptions options;
  options.uri = server.uri();
  options.connections = kConnections;
  options.threads = 2;
  options.inflight_limit = kInflightLimit;
  options.request_timeout = request_timeout;
  options.connect_timeout = absl::Seconds(5);
  return Client::Connect(options);
}

// Waits until the client has put `count` requests on the wire, or has sent nothing more for
// `settle`; returns how many it sent.
uint64_t WaitUntilSent(const Client& client, uint64_t count, absl::Duration settle) {
  uint64_t sent = client.stats().wire_requests;
  absl::Time last_change = absl::Now();
  WaitUntil(
      [&] {
        const uint64_t now_sent = client.stats().wire_requests;
        if (now_sent != sent) {
          sent = now_sent;
          last_change = absl::Now();
        }
        return sent >= count || absl::Now() - last_change >= settle;
      },
      kTestDeadline, absl::Milliseconds(1));
  return sent;
}

// Every request completed exactly once with `code`; the messages contain `phrase`.
void ExpectEachCompletedOnceWith(const CompletionTracker& tracker,
                                 const std::vector<std::unique_ptr<TrackedRequest>>& requests,
                                 absl::StatusCode code, const std::string& phrase) {
  int wrong = 0;
  for (const std::unique_ptr<TrackedRequest>& request : requests) {
    const int calls = tracker.completions(request.get());
    const absl::Status status = tracker.status(request.get());
    if (calls != 1 || status.code() != code || !absl::StrContains(status.message(), phrase)) {
      if (++wrong <= 5) {
        ADD_FAILURE() << nbd::CommandName(request->command) << " at offset " << request->offset
                      << ": " << calls << " completion(s), last " << status
                      << "; expected one with code " << absl::StatusCodeToString(code)
                      << " mentioning '" << phrase << "'";
      }
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << requests.size() << " requests";
}

// A new request must fail with UnavailableError, quickly, once the connections are gone.
void ExpectNewRequestsFailFast(Client& client) {
  std::vector<uint8_t> buffer(kRequestBytes);
  const absl::Time start = absl::Now();
  const absl::Status read = client.PreadSync(buffer.data(), buffer.size(), 0);
  const absl::Status write = client.PwriteSync(buffer.data(), buffer.size(), kRequestBytes);
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(read.code(), absl::StatusCode::kUnavailable) << read;
  EXPECT_EQ(write.code(), absl::StatusCode::kUnavailable) << write;
  EXPECT_LT(elapsed, absl::Seconds(1)) << "failing two requests took " << elapsed;
}

// Each test starts its own nbdkit and a client connected to it four ways, and sends kRequests
// requests counted by the tracker; the watchdog outlives them all.
class ServerDeathTest : public ::testing::Test {
 protected:
  // Starts nbdkit with `nbdkit_arguments` and connects a client to it, which must get all
  // kConnections connections.
  void StartAndConnect(const std::vector<std::string>& nbdkit_arguments,
                       absl::Duration request_timeout) {
    auto server = ServerProcess::StartNbdkit(nbdkit_arguments);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto connected = ConnectFourWays(*server_, request_timeout);
    ASSERT_TRUE(connected.ok()) << connected.status();
    client_ = *std::move(connected);
    ASSERT_EQ(client_->connections(), kConnections);
  }

  // SIGKILLs the server with every request sent or queued; every callback must then run
  // within 10 s.
  void KillAndWaitForEveryCallback() {
    watchdog_.Step("callbacks after SIGKILL");
    const absl::Time killed_at = absl::Now();
    server_->Kill(SIGKILL);
    ASSERT_TRUE(tracker_.WaitFor(kRequests, killed_at + absl::Seconds(10) - absl::Now()))
        << tracker_.completed() << " of " << kRequests << " callbacks ran within 10 s of SIGKILL";
  }

  void SubmitAll() {
    for (const std::unique_ptr<TrackedRequest>& request : requests_) {
      tracker_.Submit(*client_, request.get());
    }
  }

  // One at a time, each on the wire before the next: every request reaches a free slot
  // whatever the client's choice of connection for a burst.
  bool SubmitEachUntilSent(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    const uint64_t sent_before = client_->stats().wire_requests;
    for (size_t i = 0; i < requests_.size(); ++i) {
      tracker_.Submit(*client_, requests_[i].get());
      // Polled finely: the first requests' 2 s server delay runs while the rest go out.
      if (!WaitUntil([&] { return client_->stats().wire_requests >= sent_before + i + 1; },
                     deadline - absl::Now(), absl::Microseconds(20))) {
        return false;
      }
    }
    return true;
  }

  // The in-flight requests of a server that stops answering end with DeadlineExceeded after
  // request_timeout, and new requests fail fast afterwards.
  void ExpectTimeoutOfEveryInFlightRequest(absl::Time submitted_at) {
    watchdog_.Step("in-flight requests timing out");
    ASSERT_TRUE(tracker_.WaitFor(kRequests, submitted_at + absl::Seconds(10) - absl::Now()))
        << tracker_.completed() << " of " << kRequests
        << " callbacks ran within 10 s with request_timeout 1 s";
    const absl::Duration elapsed = absl::Now() - submitted_at;
    EXPECT_GE(elapsed, absl::Milliseconds(950)) << "requests timed out before request_timeout";
    EXPECT_LT(elapsed, absl::Seconds(4)) << "timing out took " << elapsed;
    ExpectEachCompletedOnceWith(tracker_, requests_, absl::StatusCode::kDeadlineExceeded,
                                "got no reply within 1000 ms");
    // A connection that had nothing in flight has not timed out and still takes requests; on
    // the silent server they time out in turn. So a new request fails either at once
    // (Unavailable: its connection is closed) or after request_timeout (DeadlineExceeded).
    watchdog_.Step("new requests after the timeouts");
    std::vector<uint8_t> buffer(kRequestBytes);
    const absl::Time start = absl::Now();
    const absl::Status read = client_->PreadSync(buffer.data(), buffer.size(), 0);
    EXPECT_LT(absl::Now() - start, absl::Seconds(3));
    EXPECT_TRUE(read.code() == absl::StatusCode::kUnavailable ||
                read.code() == absl::StatusCode::kDeadlineExceeded)
        << read;
  }

  void CloseAndDestroyClient() {
    watchdog_.Step("destroying the client");
    EXPECT_TRUE(client_->Close().ok());
    client_.reset();
  }

  Watchdog watchdog_{::testing::UnitTest::GetInstance()->current_test_info()->name(),
                     kTestDeadline};
  std::unique_ptr<ServerProcess> server_;
  // Declared before the client, which completes whatever is still in flight when destroyed.
  std::vector<std::unique_ptr<TrackedRequest>> requests_ = MakeRequests(kRequests);
  CompletionTracker tracker_;
  std::unique_ptr<Client> client_;
};

TEST_F(ServerDeathTest, SigkillWithEverySlotInFlightCompletesEachRequestOnceAsUnavailable) {
  // Each request sits in the server for 2 s, so none can be answered before the kill.
  ASSERT_NO_FATAL_FAILURE(StartAndConnect(
      {"--filter=delay", "memory", "64M", "rdelay=2", "wdelay=2"}, absl::ZeroDuration()));
  watchdog_.Step("sending 256 requests");
  ASSERT_TRUE(SubmitEachUntilSent(absl::Seconds(5)))
      << "only " << client_->stats().wire_requests << " of " << kRequests << " requests sent";
  ASSERT_EQ(tracker_.completed(), 0u) << "a request completed before the server was killed";

  const absl::Time killed_at = absl::Now();
  ASSERT_NO_FATAL_FAILURE(KillAndWaitForEveryCallback());
  const absl::Duration to_fail_all = absl::Now() - killed_at;
  EXPECT_LT(to_fail_all, absl::Seconds(2)) << "failing the in-flight requests took " << to_fail_all;
  ExpectEachCompletedOnceWith(tracker_, requests_, absl::StatusCode::kUnavailable,
                              server_->socket_path());
  const ClientStats stats = client_->stats();
  EXPECT_EQ(stats.requests, static_cast<uint64_t>(kRequests));
  EXPECT_EQ(stats.errors, static_cast<uint64_t>(kRequests));

  watchdog_.Step("new requests after the death");
  ExpectNewRequestsFailFast(*client_);

  CloseAndDestroyClient();
  // No callback ran again during Close.
  ASSERT_TRUE(tracker_.ExactlyOnce());
  watchdog_.Step("reaping the server");
  EXPECT_TRUE(server_->Wait().ok());
}

// 256 requests submitted at once, with four connections of 64 free slots each, all go on the
// wire: none waits for a slot behind a busy connection while another has free ones.
TEST_F(ServerDeathTest, BurstOfRequestsGoesOutOnEveryConnection) {
  ASSERT_NO_FATAL_FAILURE(StartAndConnect(
      {"--filter=delay", "memory", "64M", "rdelay=2", "wdelay=2"}, absl::ZeroDuration()));
  watchdog_.Step("sending a burst of 256 requests");
  SubmitAll();
  EXPECT_EQ(WaitUntilSent(*client_, kRequests, absl::Milliseconds(300)),
            static_cast<uint64_t>(kRequests))
      << "requests waited for a slot while other connections had free ones";
  EXPECT_EQ(client_->stats().queue_full_waits, 0u);

  // Whatever was sent or still queued fails once the server is gone.
  ASSERT_NO_FATAL_FAILURE(KillAndWaitForEveryCallback());
  ExpectEachCompletedOnceWith(tracker_, requests_, absl::StatusCode::kUnavailable,
                              server_->socket_path());
  CloseAndDestroyClient();
  EXPECT_TRUE(server_->Wait().ok());
}

TEST_F(ServerDeathTest, StoppedServerTimesOutEveryInFlightRequest) {
  ASSERT_NO_FATAL_FAILURE(StartAndConnect({"memory", "64M"}, absl::Seconds(1)));
  std::vector<uint8_t> buffer(kRequestBytes);
  ASSERT_TRUE(client_->PreadSync(buffer.data(), buffer.size(), 0).ok()) << "server answers first";

  server_->Kill(SIGSTOP);
  // kill() returns before every nbdkit thread has stopped; one still running could answer.
  int wait_status = 0;
  ASSERT_EQ(waitpid(server_->pid(), &wait_status, WUNTRACED), server_->pid());
  ASSERT_TRUE(WIFSTOPPED(wait_status));
  const absl::Time submitted_at = absl::Now();
  SubmitAll();
  ExpectTimeoutOfEveryInFlightRequest(submitted_at);

  CloseAndDestroyClient();
  server_->Kill(SIGKILL);
  server_->Kill(SIGCONT);
  watchdog_.Step("reaping the server");
  EXPECT_TRUE(server_->Wait().ok());
}

TEST_F(ServerDeathTest, ServerSleepingInDelayFilterTimesOutEveryInFlightRequest) {
  // One worker thread per connection: with several, nbdkit 1.32.5 itself sometimes aborts
  // ("raw_send_socket: Assertion `sock >= 0' failed") when the client closes a timed-out
  // connection while they all abort their sleeps, which resets the other connections before
  // their own requests time out.
  ASSERT_NO_FATAL_FAILURE(StartAndConnect(
      {"--threads=1", "--filter=delay", "memory", "64M", "rdelay=1000", "wdelay=1000"},
      absl::Seconds(1)));

  const absl::Time submitted_at = absl::Now();
  SubmitAll();
  ExpectTimeoutOfEveryInFlightRequest(submitted_at);
  if (HasFailure()) std::fprintf(stderr, "server log:\n%s\n", ServerLogTail(*server_).c_str());

  CloseAndDestroyClient();
  watchdog_.Step("stopping the server");
  server_.reset();
}

}  // namespace
}  // namespace nbdring
