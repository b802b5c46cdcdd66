// Interop with nbdkit: every command and command flag against real plugins (memory over Unix
// and TCP, pattern, sparse-random, null), the sync, callback and Operation APIs, and requests
// the client must refuse before sending (read-only export, flags the server did not
// advertise, out of range, zero length, misaligned to the advertised minimum block size).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <future>
#include <mutex>
#include <random>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/runtime/test_support.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring::testing {
namespace {

using ::nbd::testing::ServerProcess;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kExportSize = 64 * kMiB;

ClientOptions WithBaseAllocation() { return WithMetaContexts({"base:allocation"}); }

// The base:allocation extents of [offset, offset + length).
absl::StatusOr<std::vector<Extent>> Allocation(Client& client, uint64_t length, uint64_t offset,
                                               uint16_t flags = 0) {
  return ExtentsFor(client, "base:allocation", length, offset, flags);
}

TEST(NbdkitMemoryTest, UnixExportInfoAdvertisesEveryWriteCommand) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));
  const ExportInfo& info = client->export_info();
  EXPECT_EQ(info.size, kExportSize);
  EXPECT_EQ(client->size(), kExportSize);
  EXPECT_TRUE(info.has_flag(nbd::kFlagHasFlags));
  EXPECT_TRUE(WritableWithEveryCommand(info));
  EXPECT_FALSE(info.rotational());
  EXPECT_FALSE(info.can_resize());
  // nbdkit 1.32 predates extended headers; structured replies were asked for by default.
  EXPECT_EQ(info.reply_mode, nbd::ReplyMode::kStructured);
  EXPECT_FALSE(info.oldstyle);
  const nbd::MetaContext* allocation = info.FindMetaContext("base:allocation");
  ASSERT_NE(allocation, nullptr);
  EXPECT_EQ(allocation->name, "base:allocation");
  EXPECT_EQ(client->connections(), 1);
  EXPECT_EQ(client->threads(), 1);
  EXPECT_OK(client->Close());
}

TEST(NbdkitMemoryTest, TcpWriteThenReadReturnsTheSameBytes) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkitTcp({"memory", "64M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  EXPECT_EQ(client->size(), kExportSize);

  // Odd offset and length: nbdkit memory has a minimum block size of 1.
  const uint64_t offset = 12345;
  std::vector<uint8_t> written = RandomBytes(kMiB + 3, 1);
  ASSERT_OK(client->PwriteSync(written.data(), written.size(), offset));
  std::vector<uint8_t> read(written.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), offset));
  EXPECT_EQ(DescribeDifference(written, read), "");

  // Never written: the memory plugin reads zeroes there.
  std::vector<uint8_t> untouched(64 * kKiB, 0xaa);
  ASSERT_OK(client->PreadSync(untouched.data(), untouched.size(), 32 * kMiB));
  EXPECT_EQ(DescribeDifference(std::vector<uint8_t>(64 * kKiB, 0), untouched), "");

  ClientStats stats = client->stats();
  EXPECT_EQ(stats.requests, 3u);
  EXPECT_EQ(stats.bytes_written, written.size());
  // Payload bytes, like bytes_written: reply headers are not data the caller read.
  EXPECT_EQ(stats.bytes_read, read.size() + untouched.size());
  EXPECT_EQ(stats.errors, 0u);
}

TEST(NbdkitMemoryTest, EveryCommandThroughTheSyncApi) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));

  std::vector<uint8_t> expected = RandomBytes(kMiB, 2);
  ASSERT_OK(client->PwriteSync(expected.data(), expected.size(), 0));
  ASSERT_OK(client->FlushSync());
  ASSERT_OK(client->CacheSync(kMiB, 0));

  // Trim [256K, 512K): the memory plugin frees the pages, which then read as zeroes.
  ASSERT_OK(client->TrimSync(256 * kKiB, 256 * kKiB));
  std::fill(expected.begin() + 256 * kKiB, expected.begin() + 512 * kKiB, 0);
  // Zero [512K, 576K) and, with FAST_ZERO, [640K, 704K).
  ASSERT_OK(client->WriteZeroesSync(64 * kKiB, 512 * kKiB));
  std::fill(expected.begin() + 512 * kKiB, expected.begin() + 576 * kKiB, 0);
  ASSERT_OK(client->WriteZeroesSync(64 * kKiB, 640 * kKiB, nbd::kCmdFlagFastZero));
  std::fill(expected.begin() + 640 * kKiB, expected.begin() + 704 * kKiB, 0);

  std::vector<uint8_t> read(kMiB);
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(expected, read), "");

  ASSERT_OK_AND_ASSIGN(std::vector<Extent> extents, Allocation(*client, 2 * kMiB, 0));
  ASSERT_FALSE(extents.empty());
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 0), 0) << "written data must not be a hole";
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 255 * kKiB), 0);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 300 * kKiB), nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 520 * kKiB) & nbd::kStateZero, nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 600 * kKiB), 0);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 650 * kKiB) & nbd::kStateZero, nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, kMiB - 1), 0);
  // Nothing was ever written past 1 MiB.
  int64_t beyond = ExtentFlagsAt(extents, 0, kMiB);
  if (beyond >= 0) {
    EXPECT_EQ(beyond, nbd::kStateHole | nbd::kStateZero);
  }
  EXPECT_EQ(client->stats().errors, 0u);
}

TEST(NbdkitMemoryTest, BlockStatusFollowsWritesTrimsAndZeroes) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));

  // A fresh memory disk is one big hole.
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> before, Allocation(*client, 4 * kMiB, 0));
  ASSERT_FALSE(before.empty());
  EXPECT_EQ(before[0].flags, nbd::kStateHole | nbd::kStateZero);
  EXPECT_GE(before[0].length, 4 * kMiB);

  std::vector<uint8_t> data = RandomBytes(2 * kMiB, 3);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), kMiB));
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> written, Allocation(*client, 4 * kMiB, 0));
  EXPECT_EQ(ExtentFlagsAt(written, 0, 0), nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(written, 0, kMiB), 0);
  EXPECT_EQ(ExtentFlagsAt(written, 0, 3 * kMiB - 1), 0);
  EXPECT_EQ(ExtentFlagsAt(written, 0, 3 * kMiB), nbd::kStateHole | nbd::kStateZero);
  // Extents are contiguous and never run past the requested range by more than one extent.
  uint64_t covered = 0;
  for (const Extent& extent : written) {
    EXPECT_GT(extent.length, 0u);
    covered += extent.length;
  }
  EXPECT_GE(covered, 3 * kMiB + 1);

  ASSERT_OK(client->TrimSync(kMiB, kMiB));
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> trimmed, Allocation(*client, 4 * kMiB, 0));
  EXPECT_EQ(ExtentFlagsAt(trimmed, 0, kMiB), nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(trimmed, 0, 2 * kMiB), 0);

  // Starting the query mid-way: extents are relative to the query's offset.
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> tail, Allocation(*client, kMiB, 2 * kMiB + 4096));
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail[0].flags, 0u);
  EXPECT_EQ(ExtentFlagsAt(tail, 2 * kMiB + 4096, 3 * kMiB - 1), 0);
}

TEST(NbdkitMemoryTest, CommandFlagsFuaDfReqOneAndNoHole) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));

  std::vector<uint8_t> data = RandomBytes(512 * kKiB, 4);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0, nbd::kCmdFlagFua));
  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0, nbd::kCmdFlagDf));
  EXPECT_EQ(DescribeDifference(data, read), "");
  // DF over a hole: still one data chunk, all zeroes.
  std::vector<uint8_t> hole(64 * kKiB, 0x55);
  ASSERT_OK(client->PreadSync(hole.data(), hole.size(), 8 * kMiB, nbd::kCmdFlagDf));
  EXPECT_EQ(DescribeDifference(std::vector<uint8_t>(hole.size(), 0), hole), "");

  ASSERT_OK(client->TrimSync(64 * kKiB, 0, nbd::kCmdFlagFua));
  ASSERT_OK(client->WriteZeroesSync(64 * kKiB, 128 * kKiB, nbd::kCmdFlagNoHole));
  ASSERT_OK(client->WriteZeroesSync(64 * kKiB, 256 * kKiB,
                                    nbd::kCmdFlagFua | nbd::kCmdFlagFastZero));
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  std::fill(data.begin(), data.begin() + 64 * kKiB, 0);
  std::fill(data.begin() + 128 * kKiB, data.begin() + 192 * kKiB, 0);
  std::fill(data.begin() + 256 * kKiB, data.begin() + 320 * kKiB, 0);
  EXPECT_EQ(DescribeDifference(data, read), "");

  // REQ_ONE: exactly one extent, starting at the request's offset.
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> one,
                       Allocation(*client, 4 * kMiB, 0, nbd::kCmdFlagReqOne));
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].flags, nbd::kStateHole | nbd::kStateZero);
  EXPECT_LE(one[0].length, 4 * kMiB);
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> all, Allocation(*client, 4 * kMiB, 0));
  EXPECT_GT(all.size(), 1u);
}

TEST(NbdkitMemoryTest, CallbackApiRunsEveryCallbackExactlyOnce) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  CompletionTracker tracker;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));
  const uint32_t allocation_id = client->export_info().FindMetaContext("base:allocation")->id;

  std::vector<uint8_t> data = RandomBytes(256 * kKiB, 5);
  std::vector<uint8_t> read(data.size());
  // What each callback is counted under.
  const Operation wrote = MakeOperation(Command::kWrite, kMiB, data.size());
  const Operation read_done = MakeOperation(Command::kRead, kMiB, read.size());
  const Operation flushed = MakeOperation(Command::kFlush, 0, 0);
  const Operation cached = MakeOperation(Command::kCache, 0, kMiB);
  const Operation trimmed = MakeOperation(Command::kTrim, 4 * kMiB, 64 * kKiB);
  const Operation zeroed = MakeOperation(Command::kWriteZeroes, 5 * kMiB, 64 * kKiB);
  const Operation status_done = MakeOperation(Command::kBlockStatus, 0, 2 * kMiB);
  client->Pwrite(data.data(), data.size(), kMiB, tracker.Callback(&wrote));
  ASSERT_TRUE(tracker.WaitFor(&wrote));
  ASSERT_OK(tracker.status(&wrote));

  client->Pread(read.data(), read.size(), kMiB, tracker.Callback(&read_done));
  client->Flush(tracker.Callback(&flushed));
  client->Cache(kMiB, 0, tracker.Callback(&cached));
  ASSERT_TRUE(tracker.WaitFor(&read_done));
  ASSERT_OK(tracker.status(&read_done));
  EXPECT_EQ(DescribeDifference(data, read), "");
  client->Trim(64 * kKiB, 4 * kMiB, tracker.Callback(&trimmed), nbd::kCmdFlagFua);
  client->WriteZeroes(64 * kKiB, 5 * kMiB, tracker.Callback(&zeroed), nbd::kCmdFlagFastZero);

  std::mutex extents_mutex;
  std::vector<std::pair<uint32_t, std::vector<Extent>>> extents;
  client->BlockStatus(
      2 * kMiB, 0,
      [&](uint32_t context_id, absl::Span<const Extent> list) {
        std::lock_guard<std::mutex> lock(extents_mutex);
        extents.emplace_back(context_id, std::vector<Extent>(list.begin(), list.end()));
      },
      tracker.Callback(&status_done));
  ASSERT_TRUE(tracker.WaitForAll());
  for (const Operation* done : {&flushed, &trimmed, &zeroed, &cached, &status_done}) {
    EXPECT_TRUE(tracker.status(done).ok())
        << nbd::CommandName(done->command) << ": " << tracker.status(done);
  }
  ASSERT_OK(client->Close());
  // After Close, every callback has run and none may run again.
  EXPECT_TRUE(tracker.ExactlyOnce());
  std::lock_guard<std::mutex> lock(extents_mutex);
  ASSERT_EQ(extents.size(), 1u);
  EXPECT_EQ(extents[0].first, allocation_id);
  EXPECT_EQ(ExtentFlagsAt(extents[0].second, 0, 0), nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(extents[0].second, 0, kMiB), 0);
}

// A chain of writes driven from on_complete: the Operation is resubmitted from inside its own
// callback, which the header allows, until the whole range is written.
struct WriteChain {
  Client* client = nullptr;
  const uint8_t* source = nullptr;
  uint64_t end = 0;
  int completions = 0;  // touched only by the ring thread until `finished` is set
  std::promise<absl::Status> finished;
};

void ContinueWriteChain(Operation* operation, const absl::Status& status) {
  auto* chain = static_cast<WriteChain*>(operation->user_data);
  ++chain->completions;
  if (!status.ok() || operation->offset + operation->length >= chain->end) {
    chain->finished.set_value(UnsharedCopy(status));
    return;
  }
  operation->offset += operation->length;
  operation->buffer = const_cast<uint8_t*>(chain->source + operation->offset);
  chain->client->Submit(operation);
}

TEST(NbdkitMemoryTest, OperationCanBeResubmittedFromItsOwnCallback) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "64M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  std::vector<uint8_t> data = RandomBytes(2 * kMiB, 6);

  WriteChain chain;
  chain.client = client.get();
  chain.source = data.data();
  chain.end = data.size();
  std::future<absl::Status> finished = chain.finished.get_future();
  Operation operation = MakeOperation(Command::kWrite, 0, 128 * kKiB, data.data());
  operation.on_complete = &ContinueWriteChain;
  operation.user_data = &chain;
  client->Submit(&operation);
  ASSERT_EQ(finished.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  EXPECT_OK(finished.get());
  EXPECT_EQ(chain.completions, 16);

  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(data, read), "");
}

TEST(NbdkitPatternTest, ReadsMatchTheOffsetFormula) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"pattern", "64M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  const ExportInfo& info = client->export_info();
  EXPECT_EQ(info.size, kExportSize);
  EXPECT_TRUE(info.read_only());
  EXPECT_FALSE(info.can_flush());
  EXPECT_FALSE(info.can_trim());
  EXPECT_FALSE(info.can_zero());
  EXPECT_TRUE(info.can_cache());

  // The formula itself, checked against bytes transcribed from `nbdcopy` of the plugin.
  std::vector<uint8_t> head(24);
  ASSERT_OK(client->PreadSync(head.data(), head.size(), 0));
  EXPECT_THAT(head, ElementsAre(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0,
                                0, 0, 16));

  // Reads at unaligned offsets, of odd lengths, including one that ends at the last byte and
  // one above 32 MiB that the client must split.
  struct Range {
    uint64_t offset;
    uint64_t length;
  };
  const Range ranges[] = {{1, 7},          {4093, 9},         {65535, 131073},
                          {12345678, 4096}, {kExportSize - 13, 13}, {7, 40 * kMiB}};
  for (const Range& range : ranges) {
    SCOPED_TRACE(absl::StrCat("offset ", range.offset, " length ", range.length));
    std::vector<uint8_t> read(range.length);
    ASSERT_OK(client->PreadSync(read.data(), read.size(), range.offset));
    std::vector<uint8_t> expected(range.length);
    for (uint64_t i = 0; i < range.length; ++i) expected[i] = PatternByte(range.offset + i);
    EXPECT_EQ(DescribeDifference(expected, read), "");
  }
  EXPECT_EQ(client->stats().errors, 0u);
}

TEST(NbdkitSparseRandomTest, HolesReadAsZeroesAndEverythingMatchesNbdcopy) {
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartNbdkit({"sparse-random", "16M", "seed=42", "percent=50",
                                                   "runlength=262144", "random-content=true"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));
  const uint64_t size = client->size();
  ASSERT_EQ(size, 16 * kMiB);
  std::vector<uint8_t> read(size);
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));

  // Walk the whole export's allocation map; servers may answer a block status request with
  // less than asked for, so keep asking from where the last answer ended.
  uint64_t position = 0;
  uint64_t hole_bytes = 0;
  uint64_t data_bytes = 0;
  while (position < size) {
    ASSERT_OK_AND_ASSIGN(std::vector<Extent> extents,
                         Allocation(*client, size - position, position));
    ASSERT_FALSE(extents.empty());
    for (const Extent& extent : extents) {
      uint64_t length = std::min(extent.length, size - position);
      ASSERT_GT(length, 0u);
      if (extent.flags & nbd::kStateZero) {
        for (uint64_t i = position; i < position + length; ++i) {
          ASSERT_EQ(read[i], 0) << "byte " << i << " of an extent the server says is zero";
        }
      }
      (extent.flags & nbd::kStateHole ? hole_bytes : data_bytes) += length;
      position += length;
      if (position >= size) break;
    }
  }
  EXPECT_GT(hole_bytes, 0u);
  EXPECT_GT(data_bytes, 0u);

  ASSERT_OK_AND_ASSIGN(auto dir, nbd::testing::TempDir::Create());
  std::string copy = dir->File("copy.img");
  ASSERT_OK(RunCommand({"nbdcopy", server->uri(), copy}));
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> reference, ReadWholeFile(copy));
  EXPECT_EQ(DescribeDifference(reference, read), "");
}

TEST(NbdkitNullTest, ReadsZeroesAndAcceptsEveryWrite) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"null", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  EXPECT_EQ(client->size(), kMiB);
  EXPECT_FALSE(client->export_info().read_only());

  std::vector<uint8_t> data = RandomBytes(64 * kKiB, 7);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0, nbd::kCmdFlagFua));
  ASSERT_OK(client->WriteZeroesSync(kMiB, 0));
  ASSERT_OK(client->TrimSync(kMiB, 0));
  ASSERT_OK(client->FlushSync());
  std::vector<uint8_t> read(kMiB, 0xee);
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(std::vector<uint8_t>(kMiB, 0), read), "");
}

TEST(NbdkitMemoryTest, BlockStatusLongerThan4GiBDescribesAPrefix) {
  // A compact request's length is 32 bits; the server may describe less than was asked.
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "6G"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));
  std::vector<uint8_t> data = RandomBytes(64 * kKiB, 10);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 1ull << 30));
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> extents, Allocation(*client, 6ull << 30, 0));
  uint64_t covered = 0;
  for (const Extent& extent : extents) covered += extent.length;
  EXPECT_GE(covered, (1ull << 30) + data.size());
  EXPECT_LE(covered, 6ull << 30);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 0), nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 1ull << 30), 0);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, (1ull << 30) + data.size()),
            nbd::kStateHole | nbd::kStateZero);

  // REQ_ONE: one extent, however long the request.
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> one,
                       Allocation(*client, 6ull << 30, 0, nbd::kCmdFlagReqOne));
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].length, 1ull << 30);
}

TEST(NbdkitPatternTest, ReadsOfEverySizeThroughATinyReceiveBuffer) {
  // Replies straddle receives in every possible way: a 4 KiB receive buffer, payloads from
  // 1 byte to 20 KB, and the direct-to-buffer threshold in the middle of that range; then the
  // same with every payload copied through the receive buffer.
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"pattern", "64M"}));
  for (uint32_t direct_receive_bytes : {512u, UINT32_MAX}) {
    SCOPED_TRACE(absl::StrCat("direct_receive_bytes ", direct_receive_bytes));
    ClientOptions options;
    options.receive_buffer_bytes = 4096;
    options.direct_receive_bytes = direct_receive_bytes;
    options.inflight_limit = 128;
    CompletionTracker reads;
    ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
    std::mt19937_64 generator(direct_receive_bytes);
    std::uniform_int_distribution<uint64_t> lengths(1, 20000);
    std::uniform_int_distribution<uint64_t> offsets(0, kExportSize - 20000);
    constexpr int kReads = 2000;
    std::vector<std::vector<uint8_t>> buffers(kReads);
    std::vector<uint64_t> starts(kReads);
    for (int i = 0; i < kReads; ++i) {
      buffers[i].assign(lengths(generator), 0xee);
      starts[i] = offsets(generator);
      client->Pread(buffers[i].data(), buffers[i].size(), starts[i], reads.Callback());
    }
    ASSERT_TRUE(reads.WaitFor(kReads));
    EXPECT_OK(reads.first_error());
    EXPECT_TRUE(reads.ExactlyOnce());
    for (int i = 0; i < kReads; ++i) {
      std::vector<uint8_t> expected(buffers[i].size());
      for (uint64_t j = 0; j < expected.size(); ++j) expected[j] = PatternByte(starts[i] + j);
      ASSERT_EQ(DescribeDifference(expected, buffers[i]), "")
          << "read " << i << " at " << starts[i] << " of " << buffers[i].size();
    }
  }
}

TEST(NbdkitNegotiationTest, ExtendedHeadersFallBackToStructuredReplies) {
  // nbdkit 1.32 predates NBD_OPT_EXTENDED_HEADERS and answers it with NBD_REP_ERR_UNSUP.
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "1M"}));
  ClientOptions options = WithBaseAllocation();
  options.extended_headers = true;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  EXPECT_EQ(client->export_info().reply_mode, nbd::ReplyMode::kStructured);
  EXPECT_NE(client->export_info().FindMetaContext("base:allocation"), nullptr);
  std::vector<uint8_t> data = RandomBytes(64 * kKiB, 11);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0));
  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(data, read), "");
}

TEST(NbdkitNegotiationTest, OldstyleServer) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"-o", "memory", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));
  const ExportInfo& info = client->export_info();
  EXPECT_TRUE(info.oldstyle);
  EXPECT_EQ(info.size, kMiB);
  // The export flags nbdkit -v logs for this greeting ("flags: global 0x0 export 0xd6d"):
  // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, SEND_CACHE,
  // SEND_FAST_ZERO.
  EXPECT_EQ(info.transmission_flags, 0x0d6d);
  EXPECT_EQ(info.reply_mode, nbd::ReplyMode::kSimple);
  EXPECT_TRUE(info.meta_contexts.empty());
  std::vector<uint8_t> data = RandomBytes(100 * kKiB + 1, 12);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 7));
  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 7));
  EXPECT_EQ(DescribeDifference(data, read), "");
  // Only reads and writes: nbdkit 1.32 advertises flush, trim, zero and cache to oldstyle
  // clients but then rejects those commands with EINVAL ("flush operation not supported");
  // libnbd's `nbdcopy --flush` fails against it the same way.
}

TEST(NbdkitNegotiationTest, ExportNamesArePercentDecoded) {
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartNbdkit({"--filter=exportname", "memory", "1M",
                                                   "exportname=disk one/\xc3\xa9",
                                                   "exportname-list=explicit",
                                                   "exportname-strict=true"}));
  ClientOptions options;
  options.uri = server->uri();
  ASSERT_OK_AND_ASSIGN(std::vector<nbd::ExportListing> exports, ListExports(options));
  ASSERT_EQ(exports.size(), 1u);
  EXPECT_EQ(exports[0].name, "disk one/\xc3\xa9");
  ASSERT_OK_AND_ASSIGN(auto client,
                       ConnectTo(absl::StrCat("nbd+unix:///disk%20one%2F%C3%A9?socket=",
                                              server->socket_path())));
  EXPECT_EQ(client->export_info().name, "disk one/\xc3\xa9");
  EXPECT_EQ(client->size(), kMiB);
}

// --- Requests refused before sending -----------------------------------------------------------

TEST(NbdkitRefusalTest, WritesToAReadOnlyExportAreRefused) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"-r", "memory", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_TRUE(client->export_info().read_only());
  std::vector<uint8_t> data(4096, 1);
  ExpectRefused(*client, MakeOperation(Command::kWrite, 0, data.size(), data.data()),
                absl::StatusCode::kFailedPrecondition, "read-only");
  // nbdkit -r also withdraws NBD_FLAG_SEND_TRIM and NBD_FLAG_SEND_WRITE_ZEROES.
  ExpectRefused(*client, MakeOperation(Command::kTrim, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "NBD_FLAG_SEND_TRIM");
  ExpectRefused(*client, MakeOperation(Command::kWriteZeroes, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "NBD_FLAG_SEND_WRITE_ZEROES");
  // The sync wrappers go through the same checks.
  uint64_t sent_before = client->stats().wire_requests;
  EXPECT_EQ(client->PwriteSync(data.data(), data.size(), 0).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client->stats().wire_requests, sent_before);
  // Reads still work.
  ASSERT_OK(client->PreadSync(data.data(), data.size(), 0));
}

TEST(NbdkitRefusalTest, FuaIsRefusedWhenNotAdvertised) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"--filter=fua", "memory", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_FALSE(client->export_info().can_fua());
  std::vector<uint8_t> data(4096, 1);
  ExpectRefused(*client,
                MakeOperation(Command::kWrite, 0, data.size(), data.data(), nbd::kCmdFlagFua),
                absl::StatusCode::kInvalidArgument, "NBD_CMD_FLAG_FUA");
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0));
}

TEST(NbdkitRefusalTest, DfAndBlockStatusNeedStructuredReplies) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "1M"}));
  ClientOptions options;
  options.structured_replies = false;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  EXPECT_EQ(client->export_info().reply_mode, nbd::ReplyMode::kSimple);
  // nbdkit advertises DF only to clients that negotiated structured replies.
  ASSERT_FALSE(client->export_info().can_df());
  std::vector<uint8_t> data(4096);
  ExpectRefused(*client, MakeOperation(Command::kRead, 0, data.size(), data.data(),
                                       nbd::kCmdFlagDf),
                absl::StatusCode::kInvalidArgument, "NBD_CMD_FLAG_DF");
  ExpectRefused(*client, MakeOperation(Command::kBlockStatus, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "meta context");
  ASSERT_OK(client->PreadSync(data.data(), data.size(), 0));
}

TEST(NbdkitRefusalTest, CacheIsRefusedWhenNotAdvertised) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(
                                        {"--filter=nocache", "memory", "1M", "cachemode=none"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_FALSE(client->export_info().can_cache());
  ExpectRefused(*client, MakeOperation(Command::kCache, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "NBD_CMD_CACHE");
}

TEST(NbdkitRefusalTest, WriteZeroesIsRefusedWhenNotAdvertised) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(
                                        {"--filter=nozero", "memory", "1M", "zeromode=none"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_FALSE(client->export_info().can_zero());
  ExpectRefused(*client, MakeOperation(Command::kWriteZeroes, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "NBD_CMD_WRITE_ZEROES");
}

TEST(NbdkitRefusalTest, FastZeroIsRefusedWhenNotAdvertised) {
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartNbdkit({"--filter=nozero", "memory", "1M",
                                                   "zeromode=plugin", "fastzeromode=none"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_TRUE(client->export_info().can_zero());
  ASSERT_FALSE(client->export_info().can_fast_zero());
  ExpectRefused(*client, MakeOperation(Command::kWriteZeroes, 0, 4096, nullptr,
                                       nbd::kCmdFlagFastZero),
                absl::StatusCode::kInvalidArgument, "NBD_CMD_FLAG_FAST_ZERO");
  ASSERT_OK(client->WriteZeroesSync(4096, 0));
}

TEST(NbdkitRefusalTest, FlushIsRefusedWhenNotAdvertised) {
  // The full plugin (every write fails with ENOSPC) has no flush.
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"full", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_FALSE(client->export_info().can_flush());
  ExpectRefused(*client, MakeOperation(Command::kFlush, 0, 0),
                absl::StatusCode::kFailedPrecondition, "NBD_CMD_FLUSH");
  // And a write that is sent gets the server's ENOSPC back as an error status.
  std::vector<uint8_t> data(4096, 1);
  absl::Status full = client->PwriteSync(data.data(), data.size(), 0);
  EXPECT_FALSE(full.ok());
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
}

TEST(NbdkitRefusalTest, OutOfRangeAndZeroLengthRequestsAreRefused) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), WithBaseAllocation()));
  std::vector<uint8_t> buffer(8192);
  ExpectRefused(*client, MakeOperation(Command::kRead, kMiB - 4096, 8192, buffer.data()),
                absl::StatusCode::kOutOfRange, "1048576");
  ExpectRefused(*client, MakeOperation(Command::kWrite, kMiB, 1, buffer.data()),
                absl::StatusCode::kOutOfRange, "1048576");
  ExpectRefused(*client, MakeOperation(Command::kTrim, kMiB + 4096, 4096),
                absl::StatusCode::kOutOfRange, "1048576");
  // offset + length wraps around 2^64.
  ExpectRefused(*client, MakeOperation(Command::kRead, UINT64_MAX - 1, 4, buffer.data()),
                absl::StatusCode::kOutOfRange, "1048576");
  ExpectRefused(*client, MakeOperation(Command::kRead, 0, 0, buffer.data()),
                absl::StatusCode::kInvalidArgument, "length");
  ExpectRefused(*client, MakeOperation(Command::kWrite, 0, 0, buffer.data()),
                absl::StatusCode::kInvalidArgument, "length");
  // A read or write without a buffer cannot be sent.
  ExpectRefused(*client, MakeOperation(Command::kRead, 0, 4096, nullptr),
                absl::StatusCode::kInvalidArgument, "buffer");
  // Flags that mean nothing for a command, and a range on a command that takes none.
  ExpectRefused(*client, MakeOperation(Command::kRead, 0, 4096, buffer.data(),
                                       nbd::kCmdFlagNoHole),
                absl::StatusCode::kInvalidArgument, "not valid for NBD_CMD_READ");
  ExpectRefused(*client, MakeOperation(Command::kWrite, 0, 4096, buffer.data(),
                                       nbd::kCmdFlagReqOne),
                absl::StatusCode::kInvalidArgument, "not valid for NBD_CMD_WRITE");
  ExpectRefused(*client, MakeOperation(Command::kFlush, 0, 4096),
                absl::StatusCode::kInvalidArgument, "takes no range");
  // The last byte exactly is fine.
  ASSERT_OK(client->PreadSync(buffer.data(), 1, kMiB - 1));
}

TEST(NbdkitRefusalTest, MisalignedRequestsAreRefusedBelowTheMinimumBlockSize) {
  // blocksize-policy advertises the minimum (and makes nbdkit itself reject misaligned
  // requests with EINVAL, so a request that slipped through would fail differently).
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartNbdkit({"--filter=blocksize-policy", "memory", "1M",
                                                   "blocksize-minimum=512",
                                                   "blocksize-error-policy=error"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  const nbd::BlockSizeConstraints& block_size = client->export_info().block_size;
  ASSERT_TRUE(block_size.advertised);
  ASSERT_EQ(block_size.minimum, 512u);
  std::vector<uint8_t> buffer(4096);
  ExpectRefused(*client, MakeOperation(Command::kRead, 100, 512, buffer.data()),
                absl::StatusCode::kInvalidArgument, "512");
  ExpectRefused(*client, MakeOperation(Command::kWrite, 512, 100, buffer.data()),
                absl::StatusCode::kInvalidArgument, "512");
  ExpectRefused(*client, MakeOperation(Command::kTrim, 512, 1000),
                absl::StatusCode::kInvalidArgument, "512");
  ASSERT_OK(client->PwriteSync(buffer.data(), 1024, 512));
  ASSERT_OK(client->PreadSync(buffer.data(), 4096, 0));
}

TEST(NbdkitRefusalTest, BlockStatusWithoutANegotiatedMetaContextIsRefused) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit({"memory", "1M"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_TRUE(client->export_info().meta_contexts.empty());
  ExpectRefused(*client, MakeOperation(Command::kBlockStatus, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "meta context");
}

TEST(NbdkitBlockSizeTest, RequestsAboveTheAdvertisedMaximumAreSplit) {
  // nbdkit refuses (EINVAL) any request above 64 KiB: the client must split.
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartNbdkit({"--filter=blocksize-policy", "memory", "4M",
                                                   "blocksize-maximum=65536",
                                                   "blocksize-error-policy=error"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_EQ(client->export_info().block_size.maximum, 65536u);
  std::vector<uint8_t> data = RandomBytes(kMiB, 8);
  uint64_t sent_before = client->stats().wire_requests;
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0));
  EXPECT_GE(client->stats().wire_requests - sent_before, 16u);
  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(data, read), "");
  EXPECT_EQ(client->stats().requests, 2u);
}

// --- Errors the server sends ------------------------------------------------------------------

TEST(NbdkitErrorTest, ServerErrorsBecomeStatusesAndASplitRequestFailsOnce) {
  // The error filter fails every read (EIO) and write (ENOSPC) while the trigger file exists.
  ASSERT_OK_AND_ASSIGN(auto dir, nbd::testing::TempDir::Create());
  std::string trigger = dir->File("fail-now");
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartNbdkit(
                           {"--filter=error", "memory", "96M", "error-pread=EIO",
                            "error-pread-rate=1", absl::StrCat("error-pread-file=", trigger),
                            "error-pwrite=ENOSPC", "error-pwrite-rate=1",
                            absl::StrCat("error-pwrite-file=", trigger)}));
  CompletionTracker tracker;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  std::vector<uint8_t> data = RandomBytes(40 * kMiB, 9);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0));

  ASSERT_OK(WriteWholeFile(trigger, {}));
  std::vector<uint8_t> read(data.size());
  absl::Status eio = client->PreadSync(read.data(), 4096, 0);
  EXPECT_EQ(eio.code(), absl::StatusCode::kDataLoss) << eio;
  EXPECT_THAT(std::string(eio.message()), HasSubstr("NBD_EIO"));
  absl::Status enospc = client->PwriteSync(data.data(), 4096, 0);
  EXPECT_EQ(enospc.code(), absl::StatusCode::kResourceExhausted) << enospc;
  EXPECT_THAT(std::string(enospc.message()), HasSubstr("NBD_ENOSPC"));

  // 40 MiB goes out as two or more parts, every one of which fails: one completion, one error.
  uint64_t errors_before = client->stats().errors;
  Operation split = MakeOperation(Command::kRead, 0, read.size(), read.data());
  tracker.Submit(*client, &split);
  ASSERT_TRUE(tracker.WaitFor(&split));
  absl::Status failed = tracker.status(&split);
  EXPECT_EQ(failed.code(), absl::StatusCode::kDataLoss) << failed;
  EXPECT_EQ(client->stats().errors - errors_before, 1u);

  // Errors are per request: the connection keeps working once the server does.
  ASSERT_EQ(std::remove(trigger.c_str()), 0);
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(data, read), "");
  ASSERT_OK(client->Close());
  EXPECT_TRUE(tracker.ExactlyOnce());
}

// --- Connecting, listing, querying ----------------------------------------------------------

std::vector<std::string> NamedExportsArguments() {
  return {"--filter=exportname", "memory",          "1M",
          "exportname=alpha",    "exportname=beta", "exportname-list=explicit",
          "exportname-strict=true", "exportdesc=fixed:Test disk"};
}

TEST(NbdkitConnectTest, ListExportsAndQueryExport) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(NamedExportsArguments()));
  ClientOptions options;
  options.uri = server->uri();
  ASSERT_OK_AND_ASSIGN(std::vector<nbd::ExportListing> exports, ListExports(options));
  ASSERT_EQ(exports.size(), 2u);
  EXPECT_EQ(exports[0].name, "alpha");
  EXPECT_EQ(exports[0].description, "Test disk");
  EXPECT_EQ(exports[1].name, "beta");

  options.uri = server->uri("beta");
  options.meta_contexts = {"base:allocation"};
  ASSERT_OK_AND_ASSIGN(ExportQuery query, QueryExport(options));
  EXPECT_EQ(query.info.name, "beta");
  EXPECT_EQ(query.info.size, kMiB);
  EXPECT_EQ(query.info.description, "Test disk");
  EXPECT_TRUE(query.info.can_trim());
  EXPECT_THAT(query.available_meta_contexts, ElementsAre("base:allocation"));

  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri("alpha")));
  EXPECT_EQ(client->export_info().name, "alpha");
}

TEST(NbdkitConnectTest, UnknownExportIsAnErrorNamingIt) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(NamedExportsArguments()));
  absl::StatusOr<std::unique_ptr<Client>> client = ConnectTo(server->uri("gamma"));
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(std::string(client.status().message()), HasSubstr("gamma"));
  ClientOptions options;
  options.uri = server->uri("gamma");
  absl::StatusOr<ExportQuery> query = QueryExport(options);
  ASSERT_FALSE(query.ok());
  EXPECT_THAT(std::string(query.status().message()), HasSubstr("gamma"));
}

TEST(NbdkitConnectTest, UnreachableServerAndBadUriAreErrors) {
  ASSERT_OK_AND_ASSIGN(auto dir, nbd::testing::TempDir::Create());
  std::string missing = dir->File("nobody.sock");
  absl::StatusOr<std::unique_ptr<Client>> unreachable =
      ConnectTo(absl::StrCat("nbd+unix:///?socket=", missing));
  ASSERT_FALSE(unreachable.ok());
  EXPECT_EQ(unreachable.status().code(), absl::StatusCode::kUnavailable) << unreachable.status();
  EXPECT_THAT(std::string(unreachable.status().message()), HasSubstr(missing));

  absl::StatusOr<std::unique_ptr<Client>> bad = ConnectTo("nbd+tcp://localhost/");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

}  // namespace
}  // namespace nbdring::testing
