// ClientOptions::inflight_limit = 0 (auto) against real nbdkit servers: the limit each
// connection finds, where stats and OpenMetrics report it, and how it settles again after
// the workload changes from 4 KiB to 1 MiB reads in the middle of a run. The caller keeps
// 256 reads outstanding throughout (as nbd-bench --iodepth=256 --inflight_limit=auto does).
#include <algorithm>
#include <iostream>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/server_process.h"

// Sanitizers slow the client several times over: then it is the bottleneck, and how fast the
// limit settles says nothing about the limiter (the runs still check for races and leaks).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NBDRING_LIMIT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NBDRING_LIMIT_SANITIZED 1
#endif
#endif

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr int kOutstanding = 256;
constexpr uint64_t kRegion = 64 << 20;

// Keeps kOutstanding reads of `block_size()` bytes going at random offsets until Stop().
class ReadLoad {
 public:
  explicit ReadLoad(Client* client) : client_(client), slots_(kOutstanding) {
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& slot = slots_[i];
      slot.load = this;
      slot.random = i * 0x9E3779B97F4A7C15ull + 1;
      slot.buffer = std::make_unique<uint8_t[]>(1 << 20);
      slot.operation.command = nbd::Command::kRead;
      slot.operation.buffer = slot.buffer.get();
      slot.operation.user_data = &slot;
      slot.operation.on_complete = &ReadLoad::OnComplete;
    }
  }
  void Start() {
    running_ = kOutstanding;
    for (Slot& slot : slots_) Issue(slot);
  }
  void SetBlockSize(uint64_t bytes) { block_size_.store(bytes); }
  void Stop() {
    stopping_.store(true);
    while (running_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  uint64_t errors() const { return errors_.load(); }

 private:
  struct Slot {
    ReadLoad* load = nullptr;
    uint64_t random = 0;
    std::unique_ptr<uint8_t[]> buffer;
    Operation operation;
  };
  void Issue(Slot& slot) {
    const uint64_t size = block_size_.load();
    slot.random = slot.random * 6364136223846793005ull + 1442695040888963407ull;
    slot.operation.length = size;
    slot.operation.offset = (slot.random >> 20) % (kRegion / size) * size;
    client_->Submit(&slot.operation);
  }
  static void OnComplete(Operation* operation, const absl::Status& status) {
    Slot& slot = *static_cast<Slot*>(operation->user_data);
    if (!status.ok()) slot.load->errors_.fetch_add(1);
    if (slot.load->stopping_.load()) {
      slot.load->running_.fetch_sub(1);
      return;
    }
    slot.load->Issue(slot);
  }

  Client* client_;
  std::vector<Slot> slots_;
  std::atomic<uint64_t> block_size_{4096};
  std::atomic<bool> stopping_{false};
  std::atomic<int> running_{0};
  std::atomic<uint64_t> errors_{0};
};

// nbdkit memory with 16 threads, every read sleeping 1 ms in one of them.
std::unique_ptr<ServerProcess> StartDelayedServer() {
  auto server = ServerProcess::StartNbdkit(
      {"--filter=delay", "--threads=16", "memory", "64M", "rdelay=1ms"});
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::unique_ptr<Client> ConnectAuto(const std::string& uri) {
  ClientOptions options;
  options.uri = uri;
  options.inflight_limit = 0;
  auto client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// The limit every 25 ms for `duration`.
std::vector<uint64_t> TraceLimit(const Client& client, std::chrono::milliseconds duration) {
  std::vector<uint64_t> trace;
  const auto end = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    trace.push_back(client.stats().inflight_limit);
  }
  return trace;
}

TEST(AdaptiveLimitTest, FindsTheThreadsOfADelayedServer) {
  // Every read sleeps 1 ms in one of nbdkit's 16 threads: throughput grows with depth up to
  // 16 and not beyond, so the limit belongs near 16, not at the 256 the caller offers.
  std::unique_ptr<ServerProcess> server = StartDelayedServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = ConnectAuto(server->uri());
  ASSERT_NE(client, nullptr);
  ReadLoad load(client.get());
  load.Start();
  TraceLimit(*client, std::chrono::milliseconds(2000));
  const std::vector<uint64_t> trace = TraceLimit(*client, std::chrono::milliseconds(1000));
  const ClientStats stats = client->stats();
  const std::vector<ClientStats> per_connection = client->connection_stats();
  load.Stop();
  EXPECT_EQ(load.errors(), 0u);
  const std::string seen = absl::StrJoin(trace, " ");
  // Typically 14-20; the limiter keeps probing, and on a busy machine (tests run in parallel)
  // a sample may dip below 12 for a period or two. Near 16 means: the median in [12, 40] and
  // no sample anywhere near the 256 offered or below a quarter of the knee.
  ASSERT_FALSE(trace.empty());
  std::vector<uint64_t> sorted = trace;
  std::sort(sorted.begin(), sorted.end());
  const uint64_t median = sorted[sorted.size() / 2];
  EXPECT_GE(median, 12u) << seen;
  for (uint64_t limit : trace) EXPECT_GE(limit, 4u) << seen;
#ifndef NBDRING_LIMIT_SANITIZED
  // Under a sanitizer the client is the bottleneck, and deeper queues really do buy it
  // throughput past the server's knee (each turn amortises more of the instrumented work), so
  // a limit above 40 is the right answer there, not a limiter fault; the lower bounds stand.
  EXPECT_LE(median, 40u) << seen;
  for (uint64_t limit : trace) EXPECT_LE(limit, 64u) << seen;
#endif
  ASSERT_EQ(per_connection.size(), 1u);
  EXPECT_GE(per_connection[0].inflight_limit, 4u);
  // What the limiter saw: at least the 1 ms the filter sleeps, from staging to reply.
  EXPECT_GT(stats.wire_latency.count(), 1000u);
  EXPECT_GE(stats.wire_latency.PercentileNs(0.5), 1'000'000u);
  // The caller's latency includes the wait for a slot: 256 outstanding against a limit
  // near 16.
  EXPECT_GT(stats.read_latency.PercentileNs(0.5), 4 * stats.wire_latency.PercentileNs(0.5));
  EXPECT_GT(stats.queue_full_waits, 0u);
  EXPECT_THAT(OpenMetricsText(stats), HasSubstr("# TYPE nbdring_inflight_limit gauge\n"));
  EXPECT_THAT(OpenMetricsText(stats),
              HasSubstr(absl::StrCat("\nnbdring_inflight_limit ", stats.inflight_limit, "\n")));
}

TEST(AdaptiveLimitTest, SettlesWithinTwoSecondsAfterTheWorkloadChanges) {
  // 4 KiB reads from the 1 ms delay server want its 16 threads busy; 1 MiB reads from it are
  // bound by copying memory after a few (16 x 1 MiB per 1.3 ms would be 12 GB/s).
  std::unique_ptr<ServerProcess> server = StartDelayedServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = ConnectAuto(server->uri());
  ASSERT_NE(client, nullptr);
  ReadLoad load(client.get());
  load.Start();
  TraceLimit(*client, std::chrono::milliseconds(1000));
  const std::vector<uint64_t> small = TraceLimit(*client, std::chrono::milliseconds(1000));
  load.SetBlockSize(1 << 20);
  const std::vector<uint64_t> settling = TraceLimit(*client, std::chrono::milliseconds(2000));
  const std::vector<uint64_t> settled = TraceLimit(*client, std::chrono::milliseconds(1000));
  load.Stop();
  EXPECT_EQ(load.errors(), 0u);
  const std::string seen = absl::StrCat("4K: ", absl::StrJoin(small, " "), "\n1M, first 2 s: ",
                                        absl::StrJoin(settling, " "), "\n1M, then: ",
                                        absl::StrJoin(settled, " "));
  std::cout << seen << "\n";
  // Settled: from 2 s after the change on, the limit stays within a band (probes are not in
  // this figure: it is the limit the connection returns to). On this shared VM it wandered
  // 41-51 in one run and 17-41 in another; with the whole test suite running beside it the
  // band is wider still, so 4x: a limiter that does not settle roams 1-256.
  const auto [low, high] = std::minmax_element(settled.begin(), settled.end());
  EXPECT_GE(*low, 1u) << seen;
#ifndef NBDRING_LIMIT_SANITIZED
  EXPECT_LE(*high, 4 * *low) << seen;
#endif
}

}  // namespace
}  // namespace nbdring
