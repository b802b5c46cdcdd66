// Concurrency: several connections over several ring threads fed by several submitting
// threads; replies that come back in a different order than the requests went out; the
// in-flight limit's backpressure queue; requests above 32 MiB (and above 4 GiB) that must be
// split and still complete exactly once. Meant to run under --config=asan and --config=tsan.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/runtime/test_support.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring::testing {
namespace {

using ::nbd::testing::ServerProcess;

// One submitting thread's share of the export: the first half is filled before the threads
// start and is only read; the second half is only written, each byte once. So no two requests
// in flight ever overlap, and every read knows what it must return.
struct Region {
  uint64_t base = 0;
  uint64_t size = 0;
  std::vector<uint8_t> initial;  // the first half's contents
  std::vector<uint8_t> written;  // what the second half must hold afterwards
  std::vector<uint8_t> read;     // where the reads of the first half land
};

TEST(ConcurrencyTest, FourSubmittersFourConnectionsTwoRings) {
  constexpr int kSubmitters = 4;
  constexpr uint64_t kRegionSize = 16 * kMiB;
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  ClientOptions options;
  options.connections = 4;
  options.threads = 2;
  options.inflight_limit = 32;
  CompletionTracker completions;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  ASSERT_EQ(client->connections(), 4);
  ASSERT_EQ(client->threads(), 2);

  std::vector<Region> regions(kSubmitters);
  for (int i = 0; i < kSubmitters; ++i) {
    Region& region = regions[i];
    region.base = i * kRegionSize;
    region.size = kRegionSize;
    region.initial = RandomBytes(kRegionSize / 2, 100 + i);
    region.written = RandomBytes(kRegionSize / 2, 200 + i);
    region.read.assign(kRegionSize / 2, 0);
    ASSERT_OK(client->PwriteSync(region.initial.data(), region.initial.size(), region.base));
  }
  const uint64_t requests_before = client->stats().requests;

  // Each thread cuts both halves into pieces of 512 B to 16 KiB and interleaves reads of the
  // first half with writes of the second, half through the Operation API (writes) and half
  // through the callback API (reads, each counted under an Operation describing it).
  std::vector<std::vector<std::unique_ptr<Operation>>> writes(kSubmitters);
  std::vector<std::vector<Operation>> reads(kSubmitters);
  std::vector<std::thread> submitters;
  for (int i = 0; i < kSubmitters; ++i) {
    submitters.emplace_back([&, i] {
      Region& region = regions[i];
      std::mt19937_64 generator(300 + i);
      std::uniform_int_distribution<uint64_t> sectors(1, 32);
      std::vector<std::pair<uint64_t, uint64_t>> read_ranges, write_ranges;
      for (uint64_t offset = 0; offset < region.size / 2;) {
        uint64_t length = std::min(sectors(generator) * 512, region.size / 2 - offset);
        read_ranges.emplace_back(offset, length);
        offset += length;
      }
      for (uint64_t offset = 0; offset < region.size / 2;) {
        uint64_t length = std::min(sectors(generator) * 512, region.size / 2 - offset);
        write_ranges.emplace_back(offset, length);
        offset += length;
      }
      std::shuffle(read_ranges.begin(), read_ranges.end(), generator);
      std::shuffle(write_ranges.begin(), write_ranges.end(), generator);
      for (const auto& [offset, length] : read_ranges) {
        reads[i].push_back(MakeOperation(Command::kRead, region.base + offset, length,
                                         region.read.data() + offset));
      }
      for (const auto& [offset, length] : write_ranges) {
        writes[i].push_back(std::make_unique<Operation>(
            MakeOperation(Command::kWrite, region.base + region.size / 2 + offset, length,
                          region.written.data() + offset)));
      }
      size_t next_read = 0, next_write = 0;
      while (next_read < read_ranges.size() || next_write < write_ranges.size()) {
        if (next_read < read_ranges.size()) {
          const Operation& read = reads[i][next_read];
          client->Pread(read.buffer, read.length, read.offset, completions.Callback(&read));
          ++next_read;
        }
        if (next_write < write_ranges.size()) {
          completions.Submit(*client, writes[i][next_write].get());
          ++next_write;
        }
      }
    });
  }
  for (std::thread& submitter : submitters) submitter.join();
  const uint64_t total = completions.submitted();
  EXPECT_GT(total, 4000u);
  ASSERT_TRUE(completions.WaitFor(total, absl::Seconds(120)))
      << completions.completed() << " of " << total << " completed";
  EXPECT_OK(completions.first_error());
  ASSERT_OK(client->FlushSync());

  for (int i = 0; i < kSubmitters; ++i) {
    SCOPED_TRACE(absl::StrCat("submitter ", i));
    EXPECT_EQ(DescribeDifference(regions[i].initial, regions[i].read), "");
    std::vector<uint8_t> back(kRegionSize / 2);
    ASSERT_OK(client->PreadSync(back.data(), back.size(), regions[i].base + kRegionSize / 2));
    EXPECT_EQ(DescribeDifference(regions[i].written, back), "");
  }
  ASSERT_OK(client->Close());
  // After Close nothing is pending: every callback ran exactly once.
  EXPECT_EQ(completions.completed(), total);
  EXPECT_TRUE(completions.ExactlyOnce());
  // A FlushSync and the PreadSyncs above count too.
  EXPECT_EQ(client->stats().requests - requests_before, total + 1 + kSubmitters);
}

TEST(ConcurrencyTest, RepliesInAnotherOrderReachTheirOwnRequests) {
  // Reads of block k sleep (7 - k % 8) tenths of a second and return 4 KiB of the byte
  // k % 250 + 1: eight reads sent in order 0..7 are answered roughly in order 7..0.
  ASSERT_OK_AND_ASSIGN(
      auto server,
      ServerProcess::StartNbdkit(
          {"eval", "thread_model=echo parallel", "get_size=echo 1M",
           "pread=k=$(($4 / 4096)); sleep 0.$((7 - k % 8)); "
           "head -c $3 /dev/zero | tr '\\0' \"\\\\$(printf %03o $((k % 250 + 1)))\""}));
  CompletionTracker done;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_TRUE(client->export_info().read_only());

  constexpr int kReads = 8;
  std::vector<std::vector<uint8_t>> buffers(kReads, std::vector<uint8_t>(4096, 0));
  std::mutex order_mutex;
  std::vector<int> completion_order;
  for (int k = 0; k < kReads; ++k) {
    client->Pread(buffers[k].data(), 4096, k * 4096,
                  [&, k, count = done.Callback()](absl::Status status) mutable {
                    {
                      std::lock_guard<std::mutex> lock(order_mutex);
                      completion_order.push_back(k);
                    }
                    count(std::move(status));
                  });
  }
  ASSERT_TRUE(done.WaitFor(kReads));
  EXPECT_TRUE(done.ExactlyOnce());
  EXPECT_OK(done.first_error());
  for (int k = 0; k < kReads; ++k) {
    EXPECT_EQ(DescribeDifference(std::vector<uint8_t>(4096, static_cast<uint8_t>(k + 1)),
                                 buffers[k]),
              "")
        << "read " << k;
  }
  std::lock_guard<std::mutex> lock(order_mutex);
  ASSERT_EQ(completion_order.size(), static_cast<size_t>(kReads));
  // The 0.7 s read sent first must finish after the 0 s read sent last.
  auto position = [&](int k) {
    return std::find(completion_order.begin(), completion_order.end(), k) -
           completion_order.begin();
  };
  EXPECT_GT(position(0), position(7)) << "completion order: "
                                      << absl::StrJoin(completion_order, ",");
}

TEST(ConcurrencyTest, InflightLimitQueuesTheRestAndEverythingCompletes) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "16M"}));
  ClientOptions options;
  options.inflight_limit = 2;
  CompletionTracker completions;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));

  constexpr int kRequests = 200;
  std::vector<uint8_t> data = RandomBytes(kRequests * 8 * kKiB, 41);
  std::vector<Operation> requests;
  for (int i = 0; i < kRequests; ++i) {
    requests.push_back(
        MakeOperation(Command::kWrite, i * 8 * kKiB, 8 * kKiB, data.data() + i * 8 * kKiB));
  }
  // All 200 from this thread in one burst: at most 2 can be in flight.
  for (Operation& request : requests) completions.Submit(*client, &request);
  ASSERT_TRUE(completions.WaitForAll());
  EXPECT_OK(completions.first_error());
  EXPECT_TRUE(completions.ExactlyOnce());
  EXPECT_GT(client->stats().queue_full_waits, 0u);

  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(data, read), "");
}

TEST(ConcurrencyTest, RequestsAbove32MiBAreSplitAndCompleteOnce) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "96M"}));
  ClientOptions options;
  options.connections = 2;
  options.threads = 2;
  CompletionTracker completions;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));

  const uint64_t length = 40 * kMiB + 4097;
  const uint64_t offset = 3 * kMiB + 1;
  std::vector<uint8_t> data = RandomBytes(length, 42);
  ClientStats before = client->stats();
  Operation write = MakeOperation(Command::kWrite, offset, length, data.data());
  completions.Submit(*client, &write);
  ASSERT_TRUE(completions.WaitFor(&write));
  EXPECT_OK(completions.status(&write));
  ClientStats after_write = client->stats();
  EXPECT_EQ(after_write.requests - before.requests, 1u);
  EXPECT_GE(after_write.wire_requests - before.wire_requests, 2u);
  EXPECT_EQ(after_write.bytes_written - before.bytes_written, length);

  std::vector<uint8_t> read(length, 0);
  Operation read_request = MakeOperation(Command::kRead, offset, length, read.data());
  completions.Submit(*client, &read_request);
  ASSERT_TRUE(completions.WaitFor(&read_request));
  EXPECT_OK(completions.status(&read_request));
  EXPECT_EQ(DescribeDifference(data, read), "");
  ClientStats after_read = client->stats();
  EXPECT_EQ(after_read.requests - after_write.requests, 1u);
  EXPECT_GE(after_read.wire_requests - after_write.wire_requests, 2u);

  // Zeroing carries no payload, so the 32 MiB limit does not apply; it must still cover the
  // data written above.
  ASSERT_OK(client->WriteZeroesSync(48 * kMiB, 0));
  ASSERT_OK(client->PreadSync(read.data(), 8 * kMiB, 40 * kMiB));
  EXPECT_EQ(DescribeDifference(std::vector<uint8_t>(8 * kMiB, 0),
                               absl::MakeSpan(read).subspan(0, 8 * kMiB)),
            "");
  ASSERT_OK(client->Close());
  EXPECT_EQ(completions.completions(&write), 1);
  EXPECT_EQ(completions.completions(&read_request), 1);
}

TEST(ConcurrencyTest, LengthsAbove4GiBAreSplitForThe32BitLengthField) {
  // The memory plugin is sparse: a 6 GiB export costs nothing until written.
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "6G"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_EQ(client->size(), 6ull << 30);
  std::vector<uint8_t> data = RandomBytes(64 * kKiB, 43);
  const uint64_t far = (5ull << 30) + 12345;
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), far));
  uint64_t sent_before = client->stats().wire_requests;
  // 5 GiB does not fit a compact request's 32-bit length: at least two requests.
  ASSERT_OK(client->TrimSync(5ull << 30, 0));
  EXPECT_GE(client->stats().wire_requests - sent_before, 2u);
  ASSERT_OK(client->WriteZeroesSync(5ull << 30, kMiB));
  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), far));
  EXPECT_EQ(DescribeDifference(std::vector<uint8_t>(data.size(), 0), read), "")
      << "the zeroed range covers the data written at 5 GiB";
}

TEST(ConcurrencyTest, BlockingCallsFromACallbackAreRefused) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  std::vector<uint8_t> buffer(4096);
  std::promise<std::pair<absl::Status, absl::Status>> inner;
  Client* raw = client.get();
  client->Pread(buffer.data(), buffer.size(), 0, [&](absl::Status status) {
    EXPECT_OK(status);
    // Both would wait for this very ring thread: they must fail instead of deadlocking.
    absl::Status sync = raw->PreadSync(buffer.data(), buffer.size(), 0);
    absl::Status close = raw->Close();
    inner.set_value({UnsharedCopy(sync), UnsharedCopy(close)});
  });
  std::future<std::pair<absl::Status, absl::Status>> result = inner.get_future();
  ASSERT_EQ(result.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto [sync, close] = result.get();
  EXPECT_EQ(sync.code(), absl::StatusCode::kFailedPrecondition) << sync;
  EXPECT_EQ(close.code(), absl::StatusCode::kFailedPrecondition) << close;
  // The client is still usable from an ordinary thread.
  ASSERT_OK(client->PreadSync(buffer.data(), buffer.size(), 0));
}

TEST(ConcurrencyTest, CloseWhileOtherThreadsSubmitCompletesEverythingOnce) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "16M"}));
  ClientOptions options;
  options.connections = 2;
  options.threads = 2;
  CompletionTracker completions;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));

  constexpr int kThreads = 4;
  constexpr int kPerThread = 3000;
  constexpr uint64_t kReadSize = 512;
  // One buffer slice per request: two rings must never write the same bytes.
  std::vector<std::vector<uint8_t>> buffers(kThreads,
                                            std::vector<uint8_t>(kPerThread * kReadSize));
  // Each read is counted under an Operation describing it.
  std::vector<std::vector<Operation>> reads(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      reads[t].push_back(MakeOperation(Command::kRead, (i % 4096) * 4096, kReadSize,
                                       buffers[t].data() + i * kReadSize));
    }
  }
  std::atomic<bool> go{false};
  std::vector<std::thread> submitters;
  for (int t = 0; t < kThreads; ++t) {
    submitters.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      for (const Operation& read : reads[t]) {
        client->Pread(read.buffer, read.length, read.offset, completions.Callback(&read));
      }
    });
  }
  go.store(true);
  // Close once the submitters are well under way (a tenth of their requests), not before;
  // EXPECT, not ASSERT: the submitting threads must still be joined.
  EXPECT_TRUE(WaitUntil([&] { return completions.submitted() >= kThreads * kPerThread / 10; },
                        absl::Seconds(30)))
      << completions.submitted() << " submitted";
  ASSERT_OK(client->Close());
  for (std::thread& submitter : submitters) submitter.join();
  ASSERT_TRUE(completions.WaitFor(kThreads * kPerThread))
      << completions.completed() << " of " << kThreads * kPerThread << " completed";
  EXPECT_TRUE(completions.ExactlyOnce());
  int unexpected = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (const Operation& read : reads[t]) {
      const absl::Status status = completions.status(&read);
      if (!status.ok() && status.code() != absl::StatusCode::kUnavailable && ++unexpected <= 5) {
        ADD_FAILURE() << "read at " << read.offset << " of thread " << t << ": " << status;
      }
    }
  }
  EXPECT_EQ(unexpected, 0) << "only OK or UNAVAILABLE are expected";
  // A request after Close fails at once, still exactly once.
  Operation late = MakeOperation(Command::kRead, 0, kReadSize, buffers[0].data());
  client->Pread(late.buffer, late.length, late.offset, completions.Callback(&late));
  ASSERT_TRUE(completions.WaitFor(&late));
  EXPECT_EQ(completions.status(&late).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(completions.completions(&late), 1);
}

TEST(ConcurrencyTest, DestroyingTheClientRunsEveryPendingCallback) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "16M"}));
  ClientOptions options;
  options.inflight_limit = 4;
  CompletionTracker completions;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  constexpr int kRequests = 500;
  std::vector<uint8_t> data = RandomBytes(kRequests * 4096, 44);
  for (int i = 0; i < kRequests; ++i) {
    client->Pwrite(data.data() + i * 4096, 4096, i * 4096, completions.Callback());
  }
  client.reset();  // "Drains every request": the destructor returns after every callback ran.
  EXPECT_EQ(completions.completed(), static_cast<uint64_t>(kRequests));
  EXPECT_TRUE(completions.ExactlyOnce());
  EXPECT_EQ(completions.failed(), 0u)
      << "draining means completing, not cancelling: " << completions.first_error();

  ASSERT_OK_AND_ASSIGN(auto reader, ConnectTo(server->uri()));
  std::vector<uint8_t> read(data.size());
  ASSERT_OK(reader->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(data, read), "");
}

TEST(ConcurrencyTest, RequestTimeoutFailsTheRequestAndItsConnection) {
  // Reads take 3 s; the client gives up after 300 ms.
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(
                                        {"--filter=delay", "memory", "1M", "rdelay=3000ms"}));
  ClientOptions options;
  options.request_timeout = absl::Milliseconds(300);
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  std::vector<uint8_t> buffer(4096);
  absl::Time start = absl::Now();
  absl::Status timed_out = client->PreadSync(buffer.data(), buffer.size(), 0);
  absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(timed_out.code(), absl::StatusCode::kDeadlineExceeded) << timed_out;
  EXPECT_LT(waited, absl::Seconds(2)) << "the timeout did not fire before the server answered";
  EXPECT_GE(waited, absl::Milliseconds(250));
  // Its connection was closed: the next request fails instead of hanging.
  absl::Status after = client->PreadSync(buffer.data(), buffer.size(), 0);
  EXPECT_EQ(after.code(), absl::StatusCode::kUnavailable) << after;
}

TEST(ConcurrencyTest, ServerDeathCompletesEveryInFlightRequestWithUnavailable) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(
                                        {"--filter=delay", "memory", "1M", "rdelay=5000ms"}));
  CompletionTracker completions;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  constexpr int kReads = 10;
  std::vector<std::vector<uint8_t>> buffers(kReads, std::vector<uint8_t>(4096));
  std::vector<Operation> reads;
  for (int i = 0; i < kReads; ++i) {
    reads.push_back(MakeOperation(Command::kRead, i * 4096, 4096, buffers[i].data()));
  }
  for (const Operation& read : reads) {
    client->Pread(read.buffer, read.length, read.offset, completions.Callback(&read));
  }
  ASSERT_TRUE(WaitUntil([&] { return client->stats().wire_requests >= kReads; },
                        absl::Seconds(10)))
      << client->stats().wire_requests << " of " << kReads << " reads on the wire";
  server->Kill(SIGKILL);
  ASSERT_OK(server->Wait());
  for (int i = 0; i < kReads; ++i) {
    ASSERT_TRUE(completions.WaitFor(&reads[i], absl::Seconds(10))) << "read " << i;
    absl::Status status = completions.status(&reads[i]);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << "read " << i << ": " << status;
  }
  EXPECT_OK(client->Close());
  EXPECT_TRUE(completions.ExactlyOnce());
}

}  // namespace
}  // namespace nbdring::testing
