// nbdring::Runtime: many clients, to several real servers (nbdkit and qemu-nbd), sharing a
// few rings. Every request completes exactly once with the right data; the process runs only
// the runtime's ring threads; closing one client, or losing one server, leaves the others'
// requests undisturbed.
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "nbdring/runtime.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/event.h"
#include "tests/testing/server_process.h"
#include "tests/testing/threads.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::nbd::testing::WriteDiskImage;
using ::nbdring::testing::CompletionTracker;
using ::nbdring::testing::ThreadCount;
using ::nbdring::testing::ThreadCountBaseline;
using ::nbdring::testing::WaitUntil;

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kDiskBytes = 64 << 20;
constexpr absl::Duration kWait = absl::Seconds(30);

uint8_t ClientByte(int client, uint64_t offset) {
  return static_cast<uint8_t>(client * 37 + offset * 7 + (offset >> 12));
}

std::shared_ptr<Runtime> MakeRuntime(int threads) {
  RuntimeOptions options;
  options.threads = threads;
  auto runtime = Runtime::Create(options);
  EXPECT_TRUE(runtime.ok()) << runtime.status();
  return runtime.ok() ? *runtime : nullptr;
}

std::unique_ptr<Client> ConnectTo(const std::string& uri, const std::shared_ptr<Runtime>& runtime,
                                  int connections = 1) {
  ClientOptions options;
  options.uri = uri;
  options.connections = connections;
  auto client = Client::Connect(options, runtime);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// One request kept in flight on one client until `stop`: each completion resubmits it.
struct Stream : Operation {
  Client* client = nullptr;
  std::atomic<bool>* stop = nullptr;
  CompletionTracker* tracker = nullptr;
  std::vector<uint8_t> data = std::vector<uint8_t>(kBlock);
  uint64_t next_offset = 0;
};

class SharedRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *std::move(dir);
    auto nbdkit = ServerProcess::StartNbdkit({"memory", "64M"});
    ASSERT_TRUE(nbdkit.ok()) << nbdkit.status();
    nbdkit_ = *std::move(nbdkit);
    const std::string image = dir_->File("disk.raw");
    ASSERT_TRUE(WriteDiskImage(image, kDiskBytes, [](uint64_t) { return uint8_t{0}; }).ok());
    auto qemu = ServerProcess::StartQemuNbd(image, "raw", /*shared=*/64);
    ASSERT_TRUE(qemu.ok()) << qemu.status();
    qemu_ = *std::move(qemu);
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<ServerProcess> nbdkit_;
  std::unique_ptr<ServerProcess> qemu_;
};

// 48 clients (half to nbdkit, half to qemu-nbd), each writing and reading back its own
// region, on one runtime of 2 ring threads: the process gains exactly 2 threads, every
// request completes once, every byte read is the byte that client wrote.
TEST_F(SharedRuntimeTest, ManyClientsShareTwoRingThreadsAndEachGetsItsOwnData) {
  constexpr int kClients = 48;
  constexpr int kBlocksPerClient = 8;
  const int threads_before = ThreadCountBaseline();
  std::shared_ptr<Runtime> runtime = MakeRuntime(2);
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->threads(), 2);
  std::vector<std::unique_ptr<Client>> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.push_back(ConnectTo(c % 2 == 0 ? nbdkit_->uri() : qemu_->uri(), runtime));
    ASSERT_NE(clients.back(), nullptr);
  }
  EXPECT_EQ(ThreadCount(), threads_before + 2);
  EXPECT_EQ(ThreadCount("nbdring-ring-"), 2);
  EXPECT_EQ(runtime->connections(), kClients);

  // Clients c and c + 2 share a server: their regions must not overlap.
  auto region = [](int c) { return static_cast<uint64_t>(c / 2) * kBlocksPerClient * kBlock; };
  CompletionTracker writes;
  std::vector<std::vector<uint8_t>> written(kClients);
  for (int c = 0; c < kClients; ++c) {
    written[c].resize(kBlocksPerClient * kBlock);
    for (uint64_t i = 0; i < written[c].size(); ++i) written[c][i] = ClientByte(c, i);
    for (int b = 0; b < kBlocksPerClient; ++b) {
      clients[c]->Pwrite(written[c].data() + b * kBlock, kBlock, region(c) + b * kBlock,
                         writes.Callback());
    }
  }
  ASSERT_TRUE(writes.WaitForAll(kWait));
  EXPECT_TRUE(writes.first_error().ok()) << writes.first_error();
  EXPECT_TRUE(writes.ExactlyOnce());

  CompletionTracker reads;
  std::vector<std::vector<uint8_t>> read(kClients,
                                         std::vector<uint8_t>(kBlocksPerClient * kBlock));
  for (int c = 0; c < kClients; ++c) {
    for (int b = 0; b < kBlocksPerClient; ++b) {
      clients[c]->Pread(read[c].data() + b * kBlock, kBlock, region(c) + b * kBlock,
                        reads.Callback());
    }
  }
  ASSERT_TRUE(reads.WaitForAll(kWait));
  EXPECT_TRUE(reads.first_error().ok()) << reads.first_error();
  EXPECT_TRUE(reads.ExactlyOnce());
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(read[c], written[c]) << "client " << c;

  for (auto& client : clients) EXPECT_TRUE(client->Close().ok());
  EXPECT_EQ(runtime->connections(), 0);
  EXPECT_EQ(ThreadCount(), threads_before + 2);  // the rings serve whoever attaches next
  clients.clear();
  runtime.reset();
  EXPECT_TRUE(WaitUntil([&] { return ThreadCount() == threads_before; }, kWait));
}

// Eight clients stream reads on one ring; one of them closes mid-run. Its requests complete
// exactly once; the others go on completing, without errors, after it closed.
TEST_F(SharedRuntimeTest, ClosingOneClientLeavesTheOthersRunning) {
  constexpr int kClients = 8;
  std::shared_ptr<Runtime> runtime = MakeRuntime(1);
  ASSERT_NE(runtime, nullptr);
  std::vector<std::unique_ptr<Client>> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.push_back(ConnectTo(c % 2 == 0 ? nbdkit_->uri() : qemu_->uri(), runtime));
    ASSERT_NE(clients.back(), nullptr);
  }
  std::vector<std::atomic<bool>> stop(kClients);
  std::vector<std::unique_ptr<CompletionTracker>> trackers;
  std::vector<std::unique_ptr<Stream>> streams;
  for (int c = 0; c < kClients; ++c) {
    trackers.push_back(std::make_unique<CompletionTracker>([](Operation* operation,
                                                              const absl::Status& status) {
      auto* stream = static_cast<Stream*>(operation);
      if (!status.ok() || stream->stop->load()) return;
      stream->next_offset = (stream->next_offset + 7 * kBlock) % kDiskBytes;
      stream->offset = stream->next_offset;
      stream->tracker->Submit(*stream->client, stream);
    }));
    for (int s = 0; s < 4; ++s) {
      auto stream = std::make_unique<Stream>();
      stream->client = clients[c].get();
      stream->stop = &stop[c];
      stream->tracker = trackers[c].get();
      stream->command = Command::kRead;
      stream->length = kBlock;
      stream->buffer = stream->data.data();
      stream->next_offset = stream->offset = static_cast<uint64_t>(s) * kBlock;
      streams.push_back(std::move(stream));
      trackers[c]->Submit(*clients[c], streams.back().get());
    }
  }
  for (int c = 0; c < kClients; ++c) ASSERT_TRUE(trackers[c]->WaitFor(200, kWait)) << c;

  constexpr int kClosed = 3;
  ASSERT_TRUE(clients[kClosed]->Close().ok());
  // Close returned: every request of the closed client has completed, once.
  EXPECT_EQ(trackers[kClosed]->completed(), trackers[kClosed]->submitted());
  EXPECT_TRUE(trackers[kClosed]->ExactlyOnce());
  std::vector<uint64_t> at_close(kClients);
  for (int c = 0; c < kClients; ++c) at_close[c] = trackers[c]->completed();
  for (int c = 0; c < kClients; ++c) {
    if (c == kClosed) continue;
    EXPECT_TRUE(trackers[c]->WaitFor(at_close[c] + 200, kWait)) << "client " << c;
  }
  for (int c = 0; c < kClients; ++c) stop[c].store(true);
  for (int c = 0; c < kClients; ++c) {
    if (c == kClosed) continue;
    ASSERT_TRUE(trackers[c]->WaitForAll(kWait)) << c;
    EXPECT_TRUE(trackers[c]->first_error().ok()) << "client " << c << ": "
                                                 << trackers[c]->first_error();
    EXPECT_TRUE(trackers[c]->ExactlyOnce());
  }
  for (auto& client : clients) EXPECT_TRUE(client->Close().ok());
}

// Two clients to an nbdkit that is killed, two to qemu-nbd, all on one ring, all with reads
// in flight: the dead server's requests fail (once each) with UnavailableError; the others'
// complete, and their clients keep working.
TEST_F(SharedRuntimeTest, LosingOneServerLeavesTheOtherClientsRunning) {
  std::shared_ptr<Runtime> runtime = MakeRuntime(1);
  ASSERT_NE(runtime, nullptr);
  auto doomed = ServerProcess::StartNbdkit({"--filter=delay", "memory", "64M", "rdelay=2000ms"});
  ASSERT_TRUE(doomed.ok()) << doomed.status();
  std::vector<std::unique_ptr<Client>> lost;
  std::vector<std::unique_ptr<Client>> kept;
  for (int c = 0; c < 2; ++c) {
    lost.push_back(ConnectTo((*doomed)->uri(), runtime));
    kept.push_back(ConnectTo(qemu_->uri(), runtime));
  }
  for (auto& client : lost) ASSERT_NE(client, nullptr);
  for (auto& client : kept) ASSERT_NE(client, nullptr);

  CompletionTracker lost_reads;
  std::vector<uint8_t> lost_buffer(16 * kBlock);
  for (auto& client : lost) {
    for (int b = 0; b < 8; ++b) {
      client->Pread(lost_buffer.data() + b * kBlock, kBlock, b * kBlock, lost_reads.Callback());
    }
  }
  CompletionTracker kept_reads;
  std::vector<uint8_t> kept_buffer(64 * kBlock);
  for (int round = 0; round < 4; ++round) {
    for (auto& client : kept) {
      for (int b = 0; b < 8; ++b) {
        client->Pread(kept_buffer.data() + b * kBlock, kBlock, b * kBlock, kept_reads.Callback());
      }
    }
    if (round == 1) (*doomed)->Kill(SIGKILL);
    ASSERT_TRUE(kept_reads.WaitForAll(kWait));
  }
  ASSERT_TRUE(lost_reads.WaitForAll(kWait));
  EXPECT_EQ(lost_reads.failed(), lost_reads.submitted());
  EXPECT_EQ(lost_reads.first_error().code(), absl::StatusCode::kUnavailable)
      << lost_reads.first_error();
  EXPECT_TRUE(lost_reads.ExactlyOnce());
  EXPECT_EQ(kept_reads.failed(), 0u) << kept_reads.first_error();
  EXPECT_TRUE(kept_reads.ExactlyOnce());
  for (auto& client : kept) EXPECT_TRUE(client->PreadSync(kept_buffer.data(), kBlock, 0).ok());
  for (auto& client : lost) EXPECT_TRUE(client->Close().ok());
  for (auto& client : kept) EXPECT_TRUE(client->Close().ok());
  (*doomed)->Wait().IgnoreError();  // reaped; a killed server's exit status says nothing
}

// A callback that resubmits on every error, to a client whose server is gone, fails again
// at once, on the ring's thread: those failures must wait for the next turn, or the ring
// spins inside one turn and every other client on it starves.
struct Resubmitter : Operation {
  Client* client = nullptr;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> failures{0};
  ::nbdring::testing::Event done;
  std::vector<uint8_t> data = std::vector<uint8_t>(kBlock);
};

void ResubmitOnError(Operation* operation, const absl::Status& status) {
  auto* resubmitter = static_cast<Resubmitter*>(operation);
  if (!status.ok()) resubmitter->failures.fetch_add(1, std::memory_order_relaxed);
  if (status.ok() || resubmitter->stop.load(std::memory_order_relaxed)) {
    resubmitter->done.Notify();
    return;
  }
  resubmitter->client->Submit(operation);
}

TEST_F(SharedRuntimeTest, ACallbackResubmittingOnEveryErrorDoesNotStarveTheRing) {
  std::shared_ptr<Runtime> runtime = MakeRuntime(1);
  ASSERT_NE(runtime, nullptr);
  auto doomed = ServerProcess::StartNbdkit({"memory", "64M"});
  ASSERT_TRUE(doomed.ok()) << doomed.status();
  std::unique_ptr<Client> lost = ConnectTo((*doomed)->uri(), runtime);
  std::unique_ptr<Client> kept = ConnectTo(qemu_->uri(), runtime);
  ASSERT_NE(lost, nullptr);
  ASSERT_NE(kept, nullptr);
  (*doomed)->Kill(SIGKILL);
  (*doomed)->Wait().IgnoreError();
  std::vector<uint8_t> buffer(kBlock);
  // Once a read has failed, the connection is known lost: later requests fail locally.
  ASSERT_FALSE(lost->PreadSync(buffer.data(), kBlock, 0).ok());

  Resubmitter storm;
  storm.client = lost.get();
  storm.command = Command::kRead;
  storm.length = kBlock;
  storm.buffer = storm.data.data();
  storm.on_complete = &ResubmitOnError;
  lost->Submit(&storm);
  ASSERT_TRUE(WaitUntil([&] { return storm.failures.load() >= 1000; }, kWait));

  CompletionTracker reads;
  for (int i = 0; i < 16; ++i) {
    kept->Pread(buffer.data(), kBlock, i * kBlock, reads.Callback());
  }
  const bool served = reads.WaitForAll(absl::Seconds(10));
  storm.stop.store(true);
  ASSERT_TRUE(storm.done.WaitFor(kWait));
  EXPECT_TRUE(served) << reads.completed() << " of 16 reads completed beside the storm";
  ASSERT_TRUE(reads.WaitForAll(kWait));
  EXPECT_EQ(reads.failed(), 0u) << reads.first_error();
  EXPECT_TRUE(reads.ExactlyOnce());
  EXPECT_TRUE(lost->Close().ok());
  EXPECT_TRUE(kept->Close().ok());
}

// A blocking call from a callback could wait for the ring running it: Close and the *Sync
// calls of another client on the same runtime are refused there.
TEST_F(SharedRuntimeTest, BlockingCallsFromAnotherClientsCallbackAreRefused) {
  std::shared_ptr<Runtime> runtime = MakeRuntime(1);
  ASSERT_NE(runtime, nullptr);
  std::unique_ptr<Client> first = ConnectTo(nbdkit_->uri(), runtime);
  std::unique_ptr<Client> second = ConnectTo(qemu_->uri(), runtime);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  absl::Status close_status;
  absl::Status sync_status;
  std::atomic<bool> done{false};
  std::vector<uint8_t> buffer(kBlock);
  first->Pread(buffer.data(), kBlock, 0, [&](absl::Status) {
    close_status = testing::UnsharedCopy(second->Close());
    sync_status = testing::UnsharedCopy(second->PreadSync(buffer.data(), kBlock, 0));
    done.store(true);
  });
  ASSERT_TRUE(WaitUntil([&] { return done.load(); }, kWait));
  EXPECT_EQ(close_status.code(), absl::StatusCode::kFailedPrecondition) << close_status;
  EXPECT_EQ(sync_status.code(), absl::StatusCode::kFailedPrecondition) << sync_status;
  EXPECT_TRUE(second->PreadSync(buffer.data(), kBlock, 0).ok());  // still open
  EXPECT_TRUE(first->Close().ok());
  EXPECT_TRUE(second->Close().ok());
}

// Clients come and go while another keeps reading on the same ring: each connects and closes
// at once (attach and detach in quick succession), and the reader never sees an error.
TEST_F(SharedRuntimeTest, ClientsComingAndGoingLeaveTheOthersRunning) {
  std::shared_ptr<Runtime> runtime = MakeRuntime(1);
  ASSERT_NE(runtime, nullptr);
  std::unique_ptr<Client> reader = ConnectTo(qemu_->uri(), runtime);
  ASSERT_NE(reader, nullptr);
  std::atomic<bool> stop{false};
  CompletionTracker reads([](Operation* operation, const absl::Status& status) {
    auto* stream = static_cast<Stream*>(operation);
    if (!status.ok() || stream->stop->load()) return;
    stream->tracker->Submit(*stream->client, stream);
  });
  Stream stream;
  stream.client = reader.get();
  stream.stop = &stop;
  stream.tracker = &reads;
  stream.command = Command::kRead;
  stream.length = kBlock;
  stream.buffer = stream.data.data();
  reads.Submit(*reader, &stream);
  for (int i = 0; i < 30; ++i) {
    std::unique_ptr<Client> passing = ConnectTo(nbdkit_->uri(), runtime);
    ASSERT_NE(passing, nullptr);
    if (i % 2 == 0) {
      std::vector<uint8_t> buffer(kBlock);
      EXPECT_TRUE(passing->PreadSync(buffer.data(), kBlock, 0).ok());
    }
    EXPECT_TRUE(passing->Close().ok());
  }
  EXPECT_EQ(runtime->connections(), 1);
  const uint64_t so_far = reads.completed();
  EXPECT_TRUE(reads.WaitFor(so_far + 100, kWait));
  stop.store(true);
  ASSERT_TRUE(reads.WaitForAll(kWait));
  EXPECT_EQ(reads.failed(), 0u) << reads.first_error();
  EXPECT_TRUE(reads.ExactlyOnce());
  EXPECT_TRUE(reader->Close().ok());
}

// Caller-driven runtime: no thread at all; the owner's Poll turns the ring for every client.
TEST_F(SharedRuntimeTest, CallerDrivenRuntimeServesEveryClientFromPoll) {
  const int threads_before = ThreadCountBaseline();
  std::shared_ptr<Runtime> runtime = MakeRuntime(0);
  ASSERT_NE(runtime, nullptr);
  EXPECT_EQ(runtime->threads(), 0);
  std::vector<std::unique_ptr<Client>> clients;
  for (int c = 0; c < 6; ++c) {
    clients.push_back(ConnectTo(c % 2 == 0 ? nbdkit_->uri() : qemu_->uri(), runtime));
    ASSERT_NE(clients.back(), nullptr);
  }
  CompletionTracker reads;
  std::vector<uint8_t> buffer(kBlock);
  for (auto& client : clients) {
    for (int i = 0; i < 4; ++i) client->Pread(buffer.data(), kBlock, i * kBlock, reads.Callback());
  }
  const absl::Time deadline = absl::Now() + kWait;
  while (reads.completed() < reads.submitted() && absl::Now() < deadline) {
    ASSERT_TRUE(runtime->Poll(absl::Milliseconds(100)).ok());
  }
  EXPECT_EQ(reads.completed(), reads.submitted());
  EXPECT_EQ(reads.failed(), 0u) << reads.first_error();
  EXPECT_TRUE(reads.ExactlyOnce());
  // A sync call on the owner thread turns the shared ring itself.
  EXPECT_TRUE(clients[1]->PreadSync(buffer.data(), kBlock, 0).ok());
  EXPECT_EQ(ThreadCount(), threads_before);
  for (auto& client : clients) EXPECT_TRUE(client->Close().ok());
  EXPECT_EQ(runtime->connections(), 0);
}

}  // namespace
}  // namespace nbdring

namespace nbdring {
namespace {

// A client closed while it waits to reconnect (caller-driven: the back-off is a timer in the
// shared ring) leaves nothing of itself in the ring: the ring goes on serving the others
// after the client is destroyed (under ASan, a late completion into it would be caught).
TEST_F(SharedRuntimeTest, ClosingAReconnectingClientLeavesTheSharedRingSound) {
  std::shared_ptr<Runtime> runtime = MakeRuntime(0);
  ASSERT_NE(runtime, nullptr);
  auto doomed = ServerProcess::StartNbdkit({"memory", "64M"});
  ASSERT_TRUE(doomed.ok()) << doomed.status();
  ClientOptions reconnecting;
  reconnecting.uri = (*doomed)->uri();
  reconnecting.reconnect = true;
  reconnecting.reconnect_delay = absl::Seconds(30);
  auto lost = Client::Connect(reconnecting, runtime);
  ASSERT_TRUE(lost.ok()) << lost.status();
  std::unique_ptr<Client> kept = ConnectTo(qemu_->uri(), runtime);
  ASSERT_NE(kept, nullptr);

  (*doomed)->Kill(SIGKILL);
  (*doomed)->Wait().IgnoreError();
  CompletionTracker waiting;
  std::vector<uint8_t> buffer(kBlock);
  (*lost)->Pread(buffer.data(), kBlock, 0, waiting.Callback());
  // Long enough to see the loss and fail a first attempt: the back-off timer is armed.
  const absl::Time until = absl::Now() + absl::Milliseconds(300);
  while (absl::Now() < until) ASSERT_TRUE(runtime->Poll(absl::Milliseconds(20)).ok());
  EXPECT_EQ(waiting.completed(), 0u);  // still waiting for a new connection

  const absl::Time closing = absl::Now();
  ASSERT_TRUE((*lost)->Close().ok());
  EXPECT_LT(absl::Now() - closing, absl::Seconds(5));
  EXPECT_EQ(waiting.completed(), 1u);
  EXPECT_EQ(waiting.first_error().code(), absl::StatusCode::kUnavailable) << waiting.first_error();
  lost->reset();

  CompletionTracker reads;
  for (int round = 0; round < 20; ++round) {
    kept->Pread(buffer.data(), kBlock, 0, reads.Callback());
    const absl::Time deadline = absl::Now() + kWait;
    while (reads.completed() < reads.submitted() && absl::Now() < deadline) {
      ASSERT_TRUE(runtime->Poll(absl::Milliseconds(20)).ok());
    }
  }
  EXPECT_EQ(reads.completed(), 20u);
  EXPECT_EQ(reads.failed(), 0u) << reads.first_error();
  EXPECT_TRUE(kept->Close().ok());
}

}  // namespace
}  // namespace nbdring
