// Receive buffers shared per ring (runtime/receive_buffer_ring.h) against a real nbdkit: many
// connections on one ring read distinct data through the shared buffers; a tiny shared ring
// with more connections than buffers receiving at once still completes every read exactly
// once with the right bytes; a busy connection moves to a private buffer; and idle
// connections hold no private receive buffer. Built twice: as is, and with
// NBDRING_DISABLE_FEATURES=buf_ring (the kernel fallback), where every connection keeps a
// private buffer and the same reads must still be right.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "nbdring/runtime.h"
#include "runtime/receive_buffer_ring.h"
#include "runtime/ring.h"
#include "runtime/ring_pool.h"
#include "runtime/uring_compat.h"
#include "tests/runtime/test_support.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbdring::testing::CompletionTracker;
using ::nbdring::testing::DescribeDifference;

constexpr uint64_t kBlock = 4096;
constexpr absl::Duration kWait = absl::Seconds(60);

uint8_t ByteAt(uint64_t offset) {
  return static_cast<uint8_t>(offset * 131 + (offset >> 12) * 17 + 5);
}

// The fallback variant: the same switch the ring reads (runtime/uring_compat.h).
bool SharedBuffersOff() { return uring_compat::DisabledByEnvironment("buf_ring"); }

class SharedReceiveBuffersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto nbdkit = ServerProcess::StartNbdkit({"memory", "64M"});
    ASSERT_TRUE(nbdkit.ok()) << nbdkit.status();
    nbdkit_ = *std::move(nbdkit);
  }

  // One ring thread whose shared receive ring has at most `max_buffers` buffers.
  void MakeRuntime(uint32_t max_buffers) {
    RuntimeOptions options;
    options.threads = 1;
    ReceiveBufferRingOptions receive_buffers;
    receive_buffers.max_buffers = max_buffers;
    auto pool = RingPool::Create(options, /*ring_entries=*/1024, receive_buffers);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
  }

  std::unique_ptr<Client> Connect(int connections, uint32_t inflight_limit = 64) {
    ClientOptions options;
    options.uri = nbdkit_->uri();
    options.connections = connections;
    options.inflight_limit = inflight_limit;
    auto client = Client::Connect(options, pool_);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  const RingCounters& counters() { return pool_->loops().front()->ring()->counters(); }

  // The ring's path, as Client::notes() reports it.
  void ExpectPathNoted(const Client& client) {
    const std::string notes = absl::StrJoin(client.notes(), "\n");
    if (SharedBuffersOff()) {
      EXPECT_TRUE(absl::StrContains(notes, "buf_ring disabled by NBDRING_DISABLE_FEATURES"))
          << notes;
    } else {
      EXPECT_TRUE(absl::StrContains(notes, "receive buffers shared by the ring's connections"))
          << notes;
    }
  }

  // Writes ByteAt over [0, bytes) in 64 KiB requests.
  void Fill(Client& client, uint64_t bytes) {
    std::vector<uint8_t> data(bytes);
    for (uint64_t i = 0; i < bytes; ++i) data[i] = ByteAt(i);
    CompletionTracker writes;
    for (uint64_t offset = 0; offset < bytes; offset += 64 * 1024) {
      client.Pwrite(data.data() + offset, 64 * 1024, offset, writes.Callback());
    }
    ASSERT_TRUE(writes.WaitForAll(kWait));
    ASSERT_TRUE(writes.first_error().ok()) << writes.first_error();
  }

  // `count` 4 KiB reads in flight at once, block i from offset (i * stride) % span; every
  // one must complete exactly once with the bytes Fill wrote.
  void ReadAndVerify(Client& client, int count, uint64_t span) {
    std::vector<std::vector<uint8_t>> blocks(count, std::vector<uint8_t>(kBlock));
    std::vector<uint64_t> offsets(count);
    CompletionTracker reads;
    for (int i = 0; i < count; ++i) {
      offsets[i] = (static_cast<uint64_t>(i) * 7 * kBlock) % span;
      client.Pread(blocks[i].data(), kBlock, offsets[i], reads.Callback());
    }
    ASSERT_TRUE(reads.WaitForAll(kWait));
    EXPECT_TRUE(reads.first_error().ok()) << reads.first_error();
    EXPECT_TRUE(reads.ExactlyOnce());
    std::vector<uint8_t> expected(kBlock);
    for (int i = 0; i < count; ++i) {
      for (uint64_t j = 0; j < kBlock; ++j) expected[j] = ByteAt(offsets[i] + j);
      EXPECT_EQ(DescribeDifference(expected, blocks[i]), "")
          << "read " << i << " at offset " << offsets[i];
    }
  }

  std::unique_ptr<ServerProcess> nbdkit_;
  std::shared_ptr<RingPool> pool_;
};

// 64 connections on one ring, 3 reads in flight on each (never a whole shared buffer): all data right, and once idle no
// connection holds a private receive buffer (before shared buffers, each held 16-32 KiB).
TEST_F(SharedReceiveBuffersTest, ManyConnectionsReadThroughTheSharedBuffers) {
  constexpr int kConnections = 64;
  MakeRuntime(/*max_buffers=*/64);
  std::unique_ptr<Client> client = Connect(kConnections);
  ASSERT_NE(client, nullptr);
  ExpectPathNoted(*client);
  Fill(*client, 8 << 20);
  for (int round = 0; round < 4; ++round) ReadAndVerify(*client, 3 * kConnections, 8 << 20);
  if (SharedBuffersOff()) {
    EXPECT_EQ(counters().private_receive_buffers.load(), kConnections);
  } else {
    EXPECT_EQ(counters().private_receive_buffers.load(), 0);
    EXPECT_EQ(counters().private_receive_bytes.load(), 0);
  }
  EXPECT_TRUE(client->Close().ok());
  client.reset();
  EXPECT_EQ(counters().private_receive_buffers.load(), 0);  // the connections are gone
  EXPECT_EQ(counters().private_receive_bytes.load(), 0);
}

// A ring of two shared buffers, 32 connections with 4 reads in flight each: recvs find the
// ring empty, and still every read completes once with its bytes. The ring grows no further
// than its maximum and the retries stay bounded (no spin: each -ENOBUFS is retried on the
// ring only after others gave buffers back, else once into a private buffer).
TEST_F(SharedReceiveBuffersTest, ExhaustedSharedRingCompletesEveryReadOnce) {
  constexpr int kConnections = 32;
  constexpr int kReads = 4 * kConnections;
  constexpr int kRounds = 8;
  MakeRuntime(/*max_buffers=*/2);
  std::unique_ptr<Client> client = Connect(kConnections);
  ASSERT_NE(client, nullptr);
  ExpectPathNoted(*client);
  Fill(*client, 8 << 20);
  const uint64_t enters_before = client->stats().enters;
  for (int round = 0; round < kRounds; ++round) ReadAndVerify(*client, kReads, 8 << 20);
  const uint64_t exhausted = counters().shared_receive_exhausted.load();
  if (SharedBuffersOff()) {
    EXPECT_EQ(exhausted, 0u);
  } else {
    // 128 replies from a multi-threaded nbdkit land in far fewer enters than 128, so more
    // than two recvs complete in one at some point.
    EXPECT_GT(exhausted, 0u);
    EXPECT_LT(exhausted, 8u * kReads * kRounds);
  }
  EXPECT_LT(client->stats().enters - enters_before, 8u * kReads * kRounds);
  EXPECT_TRUE(client->Close().ok());
}

// One connection with 64 reads in flight fills a whole 32 KiB shared buffer: it becomes busy
// and receives into a private buffer larger than a shared one, with the data still right.
TEST_F(SharedReceiveBuffersTest, BusyConnectionMovesToAPrivateBuffer) {
  MakeRuntime(/*max_buffers=*/64);
  std::unique_ptr<Client> client = Connect(1);
  ASSERT_NE(client, nullptr);
  ExpectPathNoted(*client);
  Fill(*client, 8 << 20);
  for (int round = 0; round < 16; ++round) ReadAndVerify(*client, 64, 8 << 20);
  EXPECT_EQ(counters().private_receive_buffers.load(), 1);
  if (!SharedBuffersOff()) {
    EXPECT_GT(counters().private_receive_bytes.load(), 32 * 1024);
  }
  EXPECT_TRUE(client->Close().ok());
}

}  // namespace
}  // namespace nbdring
