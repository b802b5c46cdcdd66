// Client::Close(): every request completes exactly once whatever Close() races with, and
// Close() returns within a bound the options state — against a server that stops answering,
// or while a reconnect attempt waits on a server that accepts but never speaks.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/event.h"
#include "tests/testing/scripted_server.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::Custom;
using ::nbd::testing::ExpectClientFlags;
using ::nbd::testing::ExpectRequest;
using ::nbd::testing::Greet;
using ::nbd::testing::HandleOptionsUntilGo;
using ::nbd::testing::ScriptedConnection;
using ::nbd::testing::ScriptedServer;
using ::nbd::testing::ServerProcess;
using ::nbd::testing::Stall;
using ::nbdring::testing::CompletionTracker;
using ::nbdring::testing::Event;
using ::testing::HasSubstr;

// Threads submit flushes as fast as they can while another thread closes the client. Each
// Submit either reaches a ring that still completes it or sees the client closed and
// completes it itself: none may be lost (a Submit that passed the closed check just before
// Close() used to hand its operation to a ring that had already stopped).
TEST(CloseTest, SubmitsRacingCloseEachCompleteExactlyOnce) {
  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  // Many more submitting threads than cores: at any moment most of them are preempted
  // somewhere inside Submit, which is what puts one between its check and its hand-over.
  constexpr int kRounds = 30;
  constexpr int kSubmitters = 16;
  constexpr size_t kOperationsPerSubmitter = 1000;
  for (int round = 0; round < kRounds; ++round) {
    ClientOptions options;
    options.uri = (*server)->uri();
    options.connections = 2;
    options.threads = 2;
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    CompletionTracker tracker;
    std::vector<std::vector<Operation>> operations(kSubmitters,
                                                   std::vector<Operation>(kOperationsPerSubmitter));
    std::atomic<bool> stop{false};
    std::vector<std::thread> submitters;
    for (int t = 0; t < kSubmitters; ++t) {
      submitters.emplace_back([&, t] {
        for (Operation& flush : operations[t]) {
          if (stop.load(std::memory_order_relaxed)) break;
          flush.command = Command::kFlush;
          tracker.Submit(**client, &flush);
        }
      });
    }
    // Close while the submitters are busy: after the first few hundred submissions.
    ASSERT_TRUE(testing::WaitUntil([&] { return tracker.submitted() >= 200u * (round % 5 + 1); },
                                   absl::Seconds(20)));
    EXPECT_TRUE((*client)->Close().ok());
    stop = true;
    for (std::thread& submitter : submitters) submitter.join();
    ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(10)))
        << "round " << round << ": " << tracker.submitted() << " submitted, only "
        << tracker.completed() << " completed";
    ASSERT_TRUE(tracker.ExactlyOnce()) << "round " << round;
    client->reset();
  }
}

// The server takes a read and never answers. Close() gives it close_timeout, then fails it.
TEST(CloseTest, ReturnsWithinTheCloseTimeoutWhenTheServerStopsAnswering) {
  Event request_arrived;
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(),
      ExpectRequest(nbd::Command::kRead),
      Custom("tell the test the read arrived",
             [&](ScriptedConnection&) {
               request_arrived.Notify();
               return absl::OkStatus();
             }),
      Stall(),
  });
  ClientOptions options;
  options.uri = server.uri();
  options.close_timeout = absl::Milliseconds(500);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> buffer(4096);
  Operation read;
  read.command = Command::kRead;
  read.length = buffer.size();
  read.buffer = buffer.data();
  CompletionTracker tracker;
  tracker.Submit(**client, &read);
  ASSERT_TRUE(request_arrived.WaitFor(absl::Seconds(10)));

  const absl::Time closing_at = absl::Now();
  EXPECT_TRUE((*client)->Close().ok());
  const absl::Duration took = absl::Now() - closing_at;
  EXPECT_GE(took, absl::Milliseconds(400));  // it did give the server its time
  EXPECT_LT(took, absl::Seconds(3));
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(1)));  // completed before Close returned
  EXPECT_TRUE(tracker.ExactlyOnce());
  EXPECT_EQ(tracker.status(&read).code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(tracker.status(&read).message()), HasSubstr("close timeout"));
}

// A Unix socket that accepts connections into its backlog and never answers: a reconnect
// attempt against it waits for the server's greeting until connect_timeout.
class BlackHole {
 public:
  explicit BlackHole(const std::string& path) : fd_(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    unlink(path.c_str());
    ok_ = bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
          listen(fd_, 16) == 0;
  }
  ~BlackHole() { close(fd_); }
  bool ok() const { return ok_; }
  // True once a client waits in the backlog.
  bool WaitForClient(absl::Duration timeout) {
    pollfd listening{fd_, POLLIN, 0};
    return poll(&listening, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) == 1;
  }

 private:
  int fd_;
  bool ok_ = false;
};

TEST(CloseTest, AbortsAReconnectAttemptThatWaitsOnASilentServer) {
  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  options.reconnect = true;
  options.reconnect_delay = absl::Seconds(60);
  options.connect_timeout = absl::Seconds(60);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->FlushSync().ok());

  (*server)->Kill(SIGKILL);
  ASSERT_TRUE((*server)->Wait().ok());
  BlackHole black_hole((*server)->socket_path());
  ASSERT_TRUE(black_hole.ok());
  // The loss is noticed when the ring's recv ends; a request now waits for the reconnect.
  Operation flush;
  flush.command = Command::kFlush;
  CompletionTracker tracker;
  tracker.Submit(**client, &flush);
  ASSERT_TRUE(black_hole.WaitForClient(absl::Seconds(10)))
      << "the client never tried to reconnect";

  const absl::Time closing_at = absl::Now();
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_LT(absl::Now() - closing_at, absl::Seconds(3));
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(1)));
  EXPECT_TRUE(tracker.ExactlyOnce());
  EXPECT_EQ(tracker.status(&flush).code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(tracker.status(&flush).message()), HasSubstr("closed while reconnecting"));
}

// Close() from a completion callback would wait for the very thread it runs on: it refuses,
// changes nothing, and the client keeps working until it is closed from outside.
TEST(CloseTest, FromACallbackIsRefusedAndChangesNothing) {
  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  Client* raw = client->get();
  absl::Status close_status;
  CompletionTracker tracker([&](Operation*, const absl::Status&) {
    close_status = absl::Status(raw->Close().code(), "");
  });
  Operation flush;
  flush.command = Command::kFlush;
  tracker.Submit(*raw, &flush);
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(10)));
  EXPECT_EQ(close_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(raw->FlushSync().ok());  // still open
  EXPECT_TRUE(raw->Close().ok());
  EXPECT_EQ(raw->FlushSync().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace nbdring
