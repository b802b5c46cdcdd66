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
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;

constexpr int kConnections = 4;
constexpr uint32_t kInflightLimit = 64;
constexpr int kRequests = kConnections * kInflightLimit;  // every slot of every connection
// Small enough that 64 writes fit in a Unix socket's buffer even when the server reads none.
constexpr uint64_t kRequestBytes = 1024;
constexpr absl::Duration kTestDeadline = absl::Seconds(20);

// Ends the process, naming the step it was stuck in, if not disarmed within its deadline.
class Watchdog {
 public:
  explicit Watchdog(absl::Duration deadline)
      : thread_([this, deadline] {
          std::unique_lock lock(mutex_);
          if (!changed_.wait_for(lock, absl::ToChronoNanoseconds(deadline),
                                 [this] { return disarmed_; })) {
            std::fprintf(stderr, "FAILED: still waiting for '%s' after %s\n", step_.c_str(),
                         absl::FormatDuration(deadline).c_str());
            std::fflush(stderr);
            std::_Exit(1);
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      disarmed_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  void Step(std::string step) {
    std::lock_guard lock(mutex_);
    step_ = std::move(step);
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool disarmed_ = false;
  std::string step_ = "set-up";
  std::thread thread_;
};

class Tracker;

// A caller-owned request that records every completion it gets.
struct TrackedRequest {
  Operation operation;
  std::vector<uint8_t> buffer = std::vector<uint8_t>(kRequestBytes, 0x5a);
  std::atomic<int> calls{0};
  absl::Status status;  // written before the tracker hears of the completion
  Tracker* tracker = nullptr;
};

class Tracker {
 public:
  // Reads and writes alternately, each at its own offset.
  void Make(int count) {
    for (int i = 0; i < count; ++i) {
      auto request = std::make_unique<TrackedRequest>();
      request->operation.command = i % 2 == 0 ? Command::kRead : Command::kWrite;
      request->operation.offset = static_cast<uint64_t>(i) * kRequestBytes;
      request->operation.length = kRequestBytes;
      request->operation.buffer = request->buffer.data();
      request->operation.user_data = request.get();
      request->operation.on_complete = &Tracker::OnComplete;
      request->tracker = this;
      requests_.push_back(std::move(request));
    }
  }
  void SubmitAll(Client& client) {
    for (const std::unique_ptr<TrackedRequest>& request : requests_) {
      client.Submit(&request->operation);
    }
  }
  // One at a time, each on the wire before the next: every request reaches a free slot
  // whatever the client's choice of connection for a burst.
  bool SubmitEachUntilSent(Client& client, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    const uint64_t sent_before = client.stats().wire_requests;
    for (size_t i = 0; i < requests_.size(); ++i) {
      client.Submit(&requests_[i]->operation);
      while (client.stats().wire_requests < sent_before + i + 1) {
        if (absl::Now() > deadline) return false;
        std::this_thread::yield();
      }
    }
    return true;
  }
  // True once `count` completions arrived by `deadline`.
  bool WaitFor(size_t count, absl::Time deadline) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, absl::ToChronoNanoseconds(deadline - absl::Now()),
                             [&] { return completed_ >= count; });
  }
  size_t completed() {
    std::lock_guard lock(mutex_);
    return completed_;
  }
  const std::vector<std::unique_ptr<TrackedRequest>>& requests() const { return requests_; }

 private:
  static void OnComplete(Operation* operation, const absl::Status& status) {
    auto* request = static_cast<TrackedRequest*>(operation->user_data);
    request->status = status;
    request->calls.fetch_add(1, std::memory_order_acq_rel);
    Tracker& tracker = *request->tracker;
    std::lock_guard lock(tracker.mutex_);
    ++tracker.completed_;
    tracker.changed_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  size_t completed_ = 0;
  std::vector<std::unique_ptr<TrackedRequest>> requests_;
};

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
  while (sent < count && absl::Now() - last_change < settle) {
    absl::SleepFor(absl::Milliseconds(1));
    const uint64_t now_sent = client.stats().wire_requests;
    if (now_sent != sent) {
      sent = now_sent;
      last_change = absl::Now();
    }
  }
  return sent;
}

// Every request completed exactly once with `code`; the messages contain `phrase`.
void ExpectEachCompletedOnceWith(const Tracker& tracker, absl::StatusCode code,
                                 const std::string& phrase) {
  int wrong = 0;
  for (const std::unique_ptr<TrackedRequest>& request : tracker.requests()) {
    const int calls = request->calls.load();
    if (calls != 1 || request->status.code() != code ||
        !absl::StrContains(request->status.message(), phrase)) {
      if (++wrong <= 5) {
        ADD_FAILURE() << nbd::CommandName(request->operation.command) << " at offset "
                      << request->operation.offset << ": " << calls << " completion(s), last "
                      << request->status << "; expected one with code "
                      << absl::StatusCodeToString(code) << " mentioning '" << phrase << "'";
      }
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << tracker.requests().size() << " requests";
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

TEST(ServerDeathTest, SigkillWithEverySlotInFlightCompletesEachRequestOnceAsUnavailable) {
  Watchdog watchdog(kTestDeadline);
  // Each request sits in the server for 2 s, so none can be answered before the kill.
  auto server =
      ServerProcess::StartNbdkit({"--filter=delay", "memory", "64M", "rdelay=2", "wdelay=2"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto connected = ConnectFourWays(**server, absl::ZeroDuration());
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::unique_ptr<Client> client = *std::move(connected);
  ASSERT_EQ(client->connections(), kConnections);

  Tracker tracker;
  tracker.Make(kRequests);
  watchdog.Step("sending 256 requests");
  ASSERT_TRUE(tracker.SubmitEachUntilSent(*client, absl::Seconds(5)))
      << "only " << client->stats().wire_requests << " of " << kRequests << " requests sent";
  ASSERT_EQ(tracker.completed(), 0u) << "a request completed before the server was killed";

  watchdog.Step("callbacks after SIGKILL");
  const absl::Time killed_at = absl::Now();
  (*server)->Kill(SIGKILL);
  ASSERT_TRUE(tracker.WaitFor(kRequests, killed_at + absl::Seconds(10)))
      << tracker.completed() << " of " << kRequests << " callbacks ran within 10 s of SIGKILL";
  const absl::Duration to_fail_all = absl::Now() - killed_at;
  EXPECT_LT(to_fail_all, absl::Seconds(2)) << "failing the in-flight requests took " << to_fail_all;
  ExpectEachCompletedOnceWith(tracker, absl::StatusCode::kUnavailable, (*server)->socket_path());
  const ClientStats stats = client->stats();
  EXPECT_EQ(stats.requests, static_cast<uint64_t>(kRequests));
  EXPECT_EQ(stats.errors, static_cast<uint64_t>(kRequests));

  watchdog.Step("new requests after the death");
  ExpectNewRequestsFailFast(*client);

  watchdog.Step("destroying the client");
  EXPECT_TRUE(client->Close().ok());
  client.reset();
  // No callback ran again during Close.
  for (const std::unique_ptr<TrackedRequest>& request : tracker.requests()) {
    ASSERT_EQ(request->calls.load(), 1);
  }
  watchdog.Step("reaping the server");
  EXPECT_TRUE((*server)->Wait().ok());
}

// 256 requests submitted at once, with four connections of 64 free slots each, all go on the
// wire: none waits for a slot behind a busy connection while another has free ones.
TEST(ServerDeathTest, BurstOfRequestsGoesOutOnEveryConnection) {
  Watchdog watchdog(kTestDeadline);
  auto server =
      ServerProcess::StartNbdkit({"--filter=delay", "memory", "64M", "rdelay=2", "wdelay=2"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto connected = ConnectFourWays(**server, absl::ZeroDuration());
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::unique_ptr<Client> client = *std::move(connected);
  ASSERT_EQ(client->connections(), kConnections);

  Tracker tracker;
  tracker.Make(kRequests);
  watchdog.Step("sending a burst of 256 requests");
  tracker.SubmitAll(*client);
  EXPECT_EQ(WaitUntilSent(*client, kRequests, absl::Milliseconds(300)),
            static_cast<uint64_t>(kRequests))
      << "requests waited for a slot while other connections had free ones";
  EXPECT_EQ(client->stats().queue_full_waits, 0u);

  // Whatever was sent or still queued fails once the server is gone.
  watchdog.Step("callbacks after SIGKILL");
  (*server)->Kill(SIGKILL);
  ASSERT_TRUE(tracker.WaitFor(kRequests, absl::Now() + absl::Seconds(10)))
      << tracker.completed() << " of " << kRequests << " callbacks ran within 10 s of SIGKILL";
  ExpectEachCompletedOnceWith(tracker, absl::StatusCode::kUnavailable, (*server)->socket_path());
  watchdog.Step("destroying the client");
  EXPECT_TRUE(client->Close().ok());
  client.reset();
  EXPECT_TRUE((*server)->Wait().ok());
}

// The in-flight requests of a server that stops answering end with DeadlineExceeded after
// request_timeout, and new requests fail fast afterwards.
void ExpectTimeoutOfEveryInFlightRequest(Watchdog& watchdog, Client& client, Tracker& tracker,
                                         absl::Time submitted_at) {
  watchdog.Step("in-flight requests timing out");
  ASSERT_TRUE(tracker.WaitFor(kRequests, submitted_at + absl::Seconds(10)))
      << tracker.completed() << " of " << kRequests
      << " callbacks ran within 10 s with request_timeout 1 s";
  const absl::Duration elapsed = absl::Now() - submitted_at;
  EXPECT_GE(elapsed, absl::Milliseconds(950)) << "requests timed out before request_timeout";
  EXPECT_LT(elapsed, absl::Seconds(4)) << "timing out took " << elapsed;
  ExpectEachCompletedOnceWith(tracker, absl::StatusCode::kDeadlineExceeded,
                              "got no reply within 1000 ms");
  // A connection that had nothing in flight has not timed out and still takes requests; on
  // the silent server they time out in turn. So a new request fails either at once
  // (Unavailable: its connection is closed) or after request_timeout (DeadlineExceeded).
  watchdog.Step("new requests after the timeouts");
  std::vector<uint8_t> buffer(kRequestBytes);
  const absl::Time start = absl::Now();
  const absl::Status read = client.PreadSync(buffer.data(), buffer.size(), 0);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_TRUE(read.code() == absl::StatusCode::kUnavailable ||
              read.code() == absl::StatusCode::kDeadlineExceeded)
      << read;
}

TEST(ServerDeathTest, StoppedServerTimesOutEveryInFlightRequest) {
  Watchdog watchdog(kTestDeadline);
  auto server = ServerProcess::StartNbdkit({"memory", "64M"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto connected = ConnectFourWays(**server, absl::Seconds(1));
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::unique_ptr<Client> client = *std::move(connected);
  ASSERT_EQ(client->connections(), kConnections);
  std::vector<uint8_t> buffer(kRequestBytes);
  ASSERT_TRUE(client->PreadSync(buffer.data(), buffer.size(), 0).ok()) << "server answers first";

  (*server)->Kill(SIGSTOP);
  Tracker tracker;
  tracker.Make(kRequests);
  const absl::Time submitted_at = absl::Now();
  tracker.SubmitAll(*client);
  ExpectTimeoutOfEveryInFlightRequest(watchdog, *client, tracker, submitted_at);

  watchdog.Step("destroying the client");
  EXPECT_TRUE(client->Close().ok());
  client.reset();
  (*server)->Kill(SIGKILL);
  (*server)->Kill(SIGCONT);
  watchdog.Step("reaping the server");
  EXPECT_TRUE((*server)->Wait().ok());
}

TEST(ServerDeathTest, ServerSleepingInDelayFilterTimesOutEveryInFlightRequest) {
  Watchdog watchdog(kTestDeadline);
  // One worker thread per connection: with several, nbdkit 1.32.5 itself sometimes aborts
  // ("raw_send_socket: Assertion `sock >= 0' failed") when the client closes a timed-out
  // connection while they all abort their sleeps, which resets the other connections before
  // their own requests time out.
  auto server = ServerProcess::StartNbdkit(
      {"--threads=1", "--filter=delay", "memory", "64M", "rdelay=1000", "wdelay=1000"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto connected = ConnectFourWays(**server, absl::Seconds(1));
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::unique_ptr<Client> client = *std::move(connected);
  ASSERT_EQ(client->connections(), kConnections);

  Tracker tracker;
  tracker.Make(kRequests);
  const absl::Time submitted_at = absl::Now();
  tracker.SubmitAll(*client);
  ExpectTimeoutOfEveryInFlightRequest(watchdog, *client, tracker, submitted_at);
  if (HasFailure()) std::fprintf(stderr, "server log:\n%s\n", ServerLogTail(**server).c_str());

  watchdog.Step("destroying the client");
  EXPECT_TRUE(client->Close().ok());
  client.reset();
  watchdog.Step("stopping the server");
  server->reset();
}

}  // namespace
}  // namespace nbdring
