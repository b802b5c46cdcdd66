// Data integrity against independent readers and writers. nbdring writes a random 64 MiB image
// over several connections with many concurrent requests of mixed sizes (4 KiB to 4 MiB, plus
// requests above 32 MiB that the client must split), and nbdcopy / qemu-img / the raw file on
// disk read it back; then the other way round: nbdcopy writes, nbdring reads. Every comparison
// is byte for byte.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/runtime/test_support.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring::testing {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;

constexpr uint64_t kImageSize = 64 * kMiB;

struct Range {
  uint64_t offset;
  uint64_t length;
};

// Cuts [0, size) into requests: first one of 33 MiB + 4 KiB (above the 32 MiB default maximum
// payload, so the client must split it), then lengths drawn from 4 KiB to 4 MiB in 4 KiB steps.
// The order is shuffled so that neighbouring requests go out on different connections.
std::vector<Range> PlanRequests(uint64_t size, uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::uniform_int_distribution<uint64_t> pages(1, 1024);
  std::vector<Range> ranges;
  uint64_t offset = 0;
  const uint64_t huge = 33 * kMiB + 4 * kKiB;
  if (size > huge) {
    ranges.push_back({0, huge});
    offset = huge;
  }
  while (offset < size) {
    uint64_t length = std::min(pages(generator) * 4 * kKiB, size - offset);
    ranges.push_back({offset, length});
    offset += length;
  }
  std::shuffle(ranges.begin(), ranges.end(), generator);
  return ranges;
}

// Issues every write of the plan at once through the callback API and waits for all of them.
void WriteEverything(Client& client, const std::vector<uint8_t>& data, uint64_t seed) {
  std::vector<Range> plan = PlanRequests(data.size(), seed);
  CompletionTracker writes;
  for (const Range& range : plan) {
    client.Pwrite(data.data() + range.offset, range.length, range.offset, writes.Callback());
  }
  ASSERT_TRUE(writes.WaitFor(plan.size(), absl::Seconds(120)))
      << writes.completed() << " of " << plan.size() << " writes completed";
  EXPECT_OK(writes.first_error());
  EXPECT_EQ(writes.failed(), 0u);
  ASSERT_OK(client.FlushSync());
}

// Reads the whole export with a differently seeded plan into a fresh buffer.
void ReadEverything(Client& client, std::vector<uint8_t>* out, uint64_t seed) {
  out->assign(client.size(), 0xa5);
  std::vector<Range> plan = PlanRequests(out->size(), seed);
  CompletionTracker reads;
  for (const Range& range : plan) {
    client.Pread(out->data() + range.offset, range.length, range.offset, reads.Callback());
  }
  ASSERT_TRUE(reads.WaitFor(plan.size(), absl::Seconds(120)))
      << reads.completed() << " of " << plan.size() << " reads completed";
  EXPECT_OK(reads.first_error());
}

ClientOptions ManyConnections() {
  ClientOptions options;
  options.connections = 4;
  options.threads = 2;
  options.inflight_limit = 16;
  return options;
}

TEST(IntegrityTest, NbdringWritesNbdkitMemoryAndNbdcopyReadsItBack) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  std::vector<uint8_t> data = RandomBytes(kImageSize, 31);
  {
    ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), ManyConnections()));
    ASSERT_EQ(client->connections(), 4);
    WriteEverything(*client, data, 32);
    ClientStats stats = client->stats();
    EXPECT_EQ(stats.bytes_written, kImageSize);
    EXPECT_GT(stats.wire_requests, stats.requests) << "the 33 MiB write must have been split";
    ASSERT_OK(client->Close());
  }
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string copy = dir->File("copy.img");
  ASSERT_OK(RunCommand({"nbdcopy", server->uri(), copy}));
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> reference, ReadWholeFile(copy));
  EXPECT_EQ(DescribeDifference(data, reference), "");
}

TEST(IntegrityTest, NbdringWritesQemuNbdRawAndQemuImgAndTheFileAgree) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartQemuNbd(image, "raw", 8));
  std::vector<uint8_t> data = RandomBytes(kImageSize, 33);
  {
    ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), ManyConnections()));
    ASSERT_EQ(client->connections(), 4);
    WriteEverything(*client, data, 34);
    ASSERT_OK(client->Close());
  }
  std::string converted = dir->File("converted.raw");
  ASSERT_OK(RunCommand({"qemu-img", "convert", "-f", "raw", "-O", "raw", server->uri(),
                        converted}));
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> reference, ReadWholeFile(converted));
  EXPECT_EQ(DescribeDifference(data, reference), "") << "qemu-img convert";
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> on_disk, ReadWholeFile(image));
  EXPECT_EQ(DescribeDifference(data, on_disk), "") << "the raw file";
}

TEST(IntegrityTest, NbdcopyWritesNbdkitMemoryAndNbdringReadsItBack) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::vector<uint8_t> data = RandomBytes(kImageSize, 35);
  std::string source = dir->File("source.img");
  ASSERT_OK(WriteWholeFile(source, data));
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  ASSERT_OK(RunCommand({"nbdcopy", source, server->uri()}));

  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), ManyConnections()));
  std::vector<uint8_t> read;
  ReadEverything(*client, &read, 36);
  EXPECT_EQ(DescribeDifference(data, read), "");
  // And once more as a single 64 MiB request, which the client splits itself.
  std::vector<uint8_t> whole(kImageSize, 0x5a);
  ASSERT_OK(client->PreadSync(whole.data(), whole.size(), 0));
  EXPECT_EQ(DescribeDifference(data, whole), "");
}

TEST(IntegrityTest, NbdcopyWritesQemuNbdAndNbdringReadsItBack) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::vector<uint8_t> data = RandomBytes(kImageSize, 37);
  // Leave a sparse hole in the middle: nbdcopy skips zero blocks, qemu-nbd then sends hole
  // chunks, and nbdring must zero that part of its buffer.
  std::fill(data.begin() + 20 * kMiB, data.begin() + 28 * kMiB, 0);
  std::string source = dir->File("source.img");
  ASSERT_OK(WriteWholeFile(source, data));
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartQemuNbd(image, "raw", 8));
  ASSERT_OK(RunCommand({"nbdcopy", source, server->uri()}));

  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), ManyConnections()));
  std::vector<uint8_t> read;
  ReadEverything(*client, &read, 38);
  EXPECT_EQ(DescribeDifference(data, read), "");
}

}  // namespace
}  // namespace nbdring::testing
