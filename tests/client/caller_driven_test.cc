// Caller-driven mode (ClientOptions::threads = 0) against a real nbdkit: no thread is ever
// created, Poll() on the connecting thread does the I/O and runs the callbacks, and fd() is
// readable exactly when a Poll has work — so a caller's own epoll loop can drive the client.
#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"
#include "tests/testing/threads.h"

namespace nbdring {
namespace {

using ::nbdring::testing::ThreadCount;
using ::nbdring::testing::ThreadCountBaseline;

using nbd::testing::ServerProcess;
using testing::CompletionTracker;

constexpr uint64_t kBlock = 4096;

uint8_t PatternAt(uint64_t offset) { return static_cast<uint8_t>((offset * 7 + 3) >> 2); }

class CallerDrivenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = ServerProcess::StartNbdkit({"memory", "64M"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Client> ConnectPolled(int connections = 1) {
    ClientOptions options;
    options.uri = server_->uri();
    options.threads = 0;
    options.connections = connections;
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Polls (blocking at most 100 ms at a time) until `done` or the deadline.
  static bool PollUntil(Client& client, const std::function<bool()>& done,
                        absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!done()) {
      if (absl::Now() > deadline) return false;
      absl::Status polled = client.Poll(absl::Milliseconds(100));
      if (!polled.ok()) {
        ADD_FAILURE() << polled;
        return false;
      }
    }
    return true;
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_F(CallerDrivenTest, CreatesNoThreadAndCompletesEveryRequestInsidePoll) {
  const int threads_before = ThreadCountBaseline();
  std::unique_ptr<Client> client = ConnectPolled();
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->threads(), 0);

  // Write a pattern with the *Sync calls: on the owner thread they turn the ring themselves.
  std::vector<uint8_t> block(kBlock);
  for (uint64_t i = 0; i < 64; ++i) {
    for (uint64_t b = 0; b < kBlock; ++b) block[b] = PatternAt(i * kBlock + b);
    ASSERT_TRUE(client->PwriteSync(block.data(), kBlock, i * kBlock).ok());
  }

  // 256 reads kept 16 deep from the callbacks themselves, all on this thread.
  const std::thread::id owner = std::this_thread::get_id();
  std::vector<std::vector<uint8_t>> buffers(16, std::vector<uint8_t>(kBlock));
  std::atomic<int> issued{0};
  std::atomic<int> completed{0};
  std::atomic<int> wrong_thread{0};
  std::atomic<int> mismatches{0};
  std::function<void(int)> issue = [&](int slot) {
    const int n = issued.fetch_add(1);
    if (n >= 256) return;
    const uint64_t offset = static_cast<uint64_t>(n % 64) * kBlock;
    client->Pread(buffers[slot].data(), kBlock, offset, [&, slot, offset](absl::Status status) {
      if (std::this_thread::get_id() != owner) wrong_thread.fetch_add(1);
      EXPECT_TRUE(status.ok()) << status;
      for (uint64_t b = 0; b < kBlock; ++b) {
        if (buffers[slot][b] != PatternAt(offset + b)) {
          mismatches.fetch_add(1);
          break;
        }
      }
      completed.fetch_add(1);
      issue(slot);
    });
  };
  for (int slot = 0; slot < 16; ++slot) issue(slot);
  // Nothing happens between Polls: the requests only went out with the first one.
  EXPECT_EQ(completed.load(), 0);
  ASSERT_TRUE(PollUntil(*client, [&] { return completed.load() == 256; }));
  EXPECT_EQ(wrong_thread.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(ThreadCount(), threads_before) << "caller-driven mode started a thread";
  EXPECT_GE(client->stats().requests, 64u + 256u);
  EXPECT_TRUE(client->Close().ok());
}

TEST_F(CallerDrivenTest, FdIsReadableExactlyWhenPollHasWork) {
  std::unique_ptr<Client> client = ConnectPolled(/*connections=*/2);
  ASSERT_NE(client, nullptr);
  const int fd = client->fd();
  ASSERT_GE(fd, 0);
  const int epoll = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(epoll, 0);
  epoll_event watch{};
  watch.events = EPOLLIN;
  ASSERT_EQ(epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &watch), 0);
  auto ready = [&](int timeout_ms) {
    epoll_event event;
    return epoll_wait(epoll, &event, 1, timeout_ms) == 1;
  };

  // Idle: nothing to do, so the fd stays quiet (no busy loop for the caller).
  ASSERT_TRUE(client->Poll(absl::ZeroDuration()).ok());
  EXPECT_FALSE(ready(50));

  // Submitting makes it readable (the requests wait for a Poll to go out); then only the
  // fd wakes this loop, Poll never blocks, and every request completes once.
  CompletionTracker tracker;
  std::vector<uint8_t> buffer(32 * kBlock);
  for (int i = 0; i < 32; ++i) {
    client->Pread(buffer.data() + i * kBlock, kBlock, i * kBlock, tracker.Callback());
  }
  EXPECT_TRUE(ready(0));
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  int wakeups = 0;
  while (tracker.completed() < 32 && absl::Now() < deadline) {
    if (!ready(1000)) continue;
    ++wakeups;
    ASSERT_TRUE(client->Poll(absl::ZeroDuration()).ok());
  }
  ASSERT_EQ(tracker.completed(), 32u);
  EXPECT_TRUE(tracker.ExactlyOnce());
  EXPECT_TRUE(tracker.first_error().ok()) << tracker.first_error();
  EXPECT_GE(wakeups, 1);
  // Done: after draining what is left, the fd is quiet again.
  ASSERT_TRUE(client->Poll(absl::ZeroDuration()).ok());
  EXPECT_FALSE(ready(50));
  close(epoll);
  EXPECT_TRUE(client->Close().ok());
}

TEST_F(CallerDrivenTest, ASubmitFromAnotherThreadEndsABlockedPoll) {
  std::unique_ptr<Client> client = ConnectPolled();
  ASSERT_NE(client, nullptr);
  std::vector<uint8_t> buffer(kBlock);
  std::atomic<bool> done{false};
  std::thread::id ran_on;
  std::thread submitter([&] {
    absl::SleepFor(absl::Milliseconds(50));  // let the owner block in Poll first
    client->Pread(buffer.data(), kBlock, 0, [&](absl::Status status) {
      EXPECT_TRUE(status.ok()) << status;
      ran_on = std::this_thread::get_id();
      done.store(true);
    });
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!done.load() && absl::Now() < deadline) {
    ASSERT_TRUE(client->Poll(absl::InfiniteDuration()).ok());
  }
  submitter.join();
  EXPECT_TRUE(done.load());
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  // A *Sync call from another thread waits for the owner's Poll.
  std::atomic<bool> sync_done{false};
  absl::Status sync_status;
  std::thread syncer([&] {
    sync_status = client->FlushSync();
    sync_done.store(true);
  });
  EXPECT_TRUE(PollUntil(*client, [&] { return sync_done.load(); }));
  syncer.join();
  EXPECT_TRUE(sync_status.ok()) << sync_status;
  EXPECT_TRUE(client->Close().ok());
}

TEST_F(CallerDrivenTest, CloseOnTheOwnerThreadCompletesWhatIsInFlight) {
  std::unique_ptr<Client> client = ConnectPolled();
  ASSERT_NE(client, nullptr);
  CompletionTracker tracker;
  std::vector<uint8_t> buffer(64 * kBlock);
  for (int i = 0; i < 64; ++i) {
    client->Pread(buffer.data() + i * kBlock, kBlock, i * kBlock, tracker.Callback());
  }
  ASSERT_TRUE(client->Poll(absl::ZeroDuration()).ok());  // some go out, none need finish
  EXPECT_TRUE(client->Close().ok());
  EXPECT_EQ(tracker.completed(), 64u);
  EXPECT_TRUE(tracker.ExactlyOnce());
  // After Close: Poll refuses, Submit completes at once with Unavailable.
  EXPECT_EQ(client->Poll(absl::ZeroDuration()).code(), absl::StatusCode::kFailedPrecondition);
  absl::Status late;
  client->Pread(buffer.data(), kBlock, 0, [&](absl::Status status) { late = status; });
  EXPECT_EQ(late.code(), absl::StatusCode::kUnavailable);
}

TEST_F(CallerDrivenTest, RefusesWhatNeedsThreadsAndCallsFromTheWrongThread) {
  ClientOptions options;
  options.uri = server_->uri();
  options.threads = 0;
  options.ring_cpus = {0};
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.ring_cpus.clear();
  options.threads = -1;
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);

  // A threaded client has no Poll and no fd.
  options.threads = 1;
  auto threaded = Client::Connect(options);
  ASSERT_TRUE(threaded.ok()) << threaded.status();
  EXPECT_EQ((*threaded)->Poll(absl::ZeroDuration()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*threaded)->fd(), -1);

  std::unique_ptr<Client> client = ConnectPolled();
  ASSERT_NE(client, nullptr);
  absl::Status poll_elsewhere, close_elsewhere;
  int fd_elsewhere = 0;
  std::thread other([&] {
    poll_elsewhere = client->Poll(absl::ZeroDuration());
    close_elsewhere = client->Close();
    fd_elsewhere = client->fd();
  });
  other.join();
  EXPECT_EQ(poll_elsewhere.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(close_elsewhere.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(fd_elsewhere, -1);
  // Poll and Close from a callback would wait for themselves.
  absl::Status poll_inside, close_inside;
  std::atomic<bool> done{false};
  client->Flush([&](absl::Status) {
    poll_inside = client->Poll(absl::ZeroDuration());
    close_inside = client->Close();
    done.store(true);
  });
  ASSERT_TRUE(PollUntil(*client, [&] { return done.load(); }));
  EXPECT_EQ(poll_inside.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(close_inside.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(client->Close().ok());
}

}  // namespace
}  // namespace nbdring
