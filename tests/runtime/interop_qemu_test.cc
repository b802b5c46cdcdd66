// Interop with qemu-nbd: a raw file and a qcow2 image, multi-conn (--shared=8) with several
// connections over several rings, every command, reads that come back as hole chunks, and
// qemu's own meta context qemu:allocation-depth. The file on disk (raw) and qemu-img (qcow2)
// are the independent readers that check what the client wrote.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
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
using ::nbd::testing::TempDir;
using ::testing::HasSubstr;

constexpr uint64_t kImageSize = 64 * kMiB;

TEST(QemuNbdRawTest, EveryCommandAndTheFileOnDiskAgrees) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  // --discard=unmap: without it qemu ignores trims and a trimmed range would still be data.
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartQemuNbd(image, "raw", 8, {"--discard=unmap"}));
  ASSERT_OK_AND_ASSIGN(auto client,
                       ConnectTo(server->uri(), WithMetaContexts({"base:allocation"})));
  const ExportInfo& info = client->export_info();
  EXPECT_EQ(info.size, kImageSize);
  EXPECT_TRUE(WritableWithEveryCommand(info));
  EXPECT_TRUE(info.structured_replies());
  // qemu-nbd always sends NBD_INFO_BLOCK_SIZE; its maximum payload is 32 MiB.
  EXPECT_TRUE(info.block_size.advertised);
  EXPECT_EQ(info.block_size.maximum, 32 * kMiB);

  std::vector<uint8_t> expected(kImageSize, 0);
  std::vector<uint8_t> data = RandomBytes(4 * kMiB, 11);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), kMiB));
  std::copy(data.begin(), data.end(), expected.begin() + kMiB);
  std::vector<uint8_t> fua = RandomBytes(64 * kKiB + 17, 12);
  ASSERT_OK(client->PwriteSync(fua.data(), fua.size(), 8 * kMiB + 5, nbd::kCmdFlagFua));
  std::copy(fua.begin(), fua.end(), expected.begin() + 8 * kMiB + 5);
  ASSERT_OK(client->CacheSync(kMiB, kMiB));

  ASSERT_OK(client->TrimSync(kMiB, 2 * kMiB));
  std::fill(expected.begin() + 2 * kMiB, expected.begin() + 3 * kMiB, 0);
  ASSERT_OK(client->WriteZeroesSync(256 * kKiB, 4 * kMiB));
  std::fill(expected.begin() + 4 * kMiB, expected.begin() + 4 * kMiB + 256 * kKiB, 0);
  ASSERT_OK(client->WriteZeroesSync(64 * kKiB, 4 * kMiB + 512 * kKiB, nbd::kCmdFlagNoHole));
  std::fill(expected.begin() + 4 * kMiB + 512 * kKiB, expected.begin() + 4 * kMiB + 576 * kKiB,
            0);
  ASSERT_OK(client->FlushSync());

  std::vector<uint8_t> read(16 * kMiB);
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(absl::MakeSpan(expected).subspan(0, read.size()), read), "");

  ASSERT_OK_AND_ASSIGN(std::vector<Extent> extents,
                       ExtentsFor(*client, "base:allocation", 16 * kMiB, 0));
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 0), nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, kMiB), 0);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 2 * kMiB) & nbd::kStateZero, nbd::kStateZero)
      << "trimmed with --discard=unmap";
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 4 * kMiB) & nbd::kStateZero, nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(extents, 0, 4 * kMiB + 600 * kKiB), 0);
  EXPECT_OK(client->Close());

  // The independent reader: the raw file itself.
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> on_disk, ReadWholeFile(image));
  EXPECT_EQ(DescribeDifference(expected, on_disk), "");
}

// A read through the Operation API that records the holes the server reported: (offset in
// request, length) of each, in the order reported. Read `holes` once the read completed.
struct HoleTrackingRead : Operation {
  HoleTrackingRead(uint64_t read_offset, absl::Span<uint8_t> destination) {
    command = Command::kRead;
    offset = read_offset;
    length = destination.size();
    buffer = destination.data();
    on_hole = &HoleTrackingRead::OnHole;
  }
  static void OnHole(Operation* operation, uint64_t offset_in_request, uint64_t length) {
    static_cast<HoleTrackingRead*>(operation)->holes.emplace_back(offset_in_request, length);
  }
  std::vector<std::pair<uint64_t, uint64_t>> holes;
};

TEST(QemuNbdRawTest, SparseReadsArriveAsHoleChunksAndAreZeroed) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("sparse.raw");
  ASSERT_OK(CreateSparseFile(image, 4 * kMiB));
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartQemuNbd(image, "raw"));
  CompletionTracker tracker;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));

  std::vector<uint8_t> data = RandomBytes(128 * kKiB, 13);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0));
  ASSERT_OK(client->FlushSync());

  // [0, 128K) data, [128K, 2M) never written: qemu answers the latter with OFFSET_HOLE.
  // The buffer starts out non-zero so that a hole the client forgot to zero shows.
  std::vector<uint8_t> buffer(2 * kMiB, 0xa5);
  HoleTrackingRead read(0, absl::MakeSpan(buffer));
  tracker.Submit(*client, &read);
  ASSERT_TRUE(tracker.WaitFor(&read));
  ASSERT_OK(tracker.status(&read));

  std::vector<uint8_t> expected(buffer.size(), 0);
  std::copy(data.begin(), data.end(), expected.begin());
  EXPECT_EQ(DescribeDifference(expected, buffer), "");
  EXPECT_TRUE(tracker.ExactlyOnce());
  const std::vector<std::pair<uint64_t, uint64_t>> holes = read.holes;
  ASSERT_FALSE(holes.empty()) << "qemu-nbd sends NBD_REPLY_TYPE_OFFSET_HOLE for sparse reads";
  uint64_t hole_bytes = 0;
  for (const auto& [offset, length] : holes) {
    EXPECT_GE(offset, data.size()) << "a hole reported over written data";
    EXPECT_LE(offset + length, buffer.size());
    hole_bytes += length;
  }
  EXPECT_EQ(hole_bytes, buffer.size() - data.size());

  // With DF the same range comes as one data chunk: no holes reported, same bytes.
  std::vector<uint8_t> unfragmented(buffer.size(), 0x5a);
  ASSERT_OK(client->PreadSync(unfragmented.data(), unfragmented.size(), 0, nbd::kCmdFlagDf));
  EXPECT_EQ(DescribeDifference(expected, unfragmented), "");
}

TEST(QemuNbdRawTest, HolesInASplitReadAreReportedRelativeToTheWholeRequest) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("sparse.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartQemuNbd(image, "raw"));
  CompletionTracker tracker;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));

  // Data at [1M, 1M+128K) and [37M, 37M+128K) of a 40 MiB read starting at 0: the second lies
  // in the part after the 32 MiB split.
  std::vector<uint8_t> expected(40 * kMiB, 0);
  for (uint64_t at : {kMiB, 37 * kMiB}) {
    std::vector<uint8_t> data = RandomBytes(128 * kKiB, at);
    ASSERT_OK(client->PwriteSync(data.data(), data.size(), at));
    std::copy(data.begin(), data.end(), expected.begin() + at);
  }
  ASSERT_OK(client->FlushSync());

  std::vector<uint8_t> buffer(expected.size(), 0xa5);
  HoleTrackingRead read(0, absl::MakeSpan(buffer));
  tracker.Submit(*client, &read);
  ASSERT_TRUE(tracker.WaitFor(&read));
  ASSERT_OK(tracker.status(&read));
  EXPECT_EQ(DescribeDifference(expected, buffer), "");
  // Every hole lies where nothing was written, and together they cover everything else.
  uint64_t hole_bytes = 0;
  for (const auto& [offset, length] : read.holes) {
    ASSERT_LE(offset + length, expected.size());
    for (uint64_t at : {kMiB, 37 * kMiB}) {
      EXPECT_TRUE(offset + length <= at || offset >= at + 128 * kKiB)
          << "hole [" << offset << ", " << offset + length << ") overlaps data at " << at;
    }
    hole_bytes += length;
  }
  EXPECT_EQ(hole_bytes, expected.size() - 2 * 128 * kKiB);
}

TEST(QemuNbdQcow2Test, WriteReadTrimZeroWithAllocationDepth) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.qcow2");
  ASSERT_OK(RunCommand({"qemu-img", "create", "-q", "-f", "qcow2", image, "64M"}));
  // -A offers qemu:allocation-depth.
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartQemuNbd(image, "qcow2", 8, {"-A", "--discard=unmap"}));
  ClientOptions options = WithMetaContexts({"base:allocation", "qemu:allocation-depth"});
  options.connections = 2;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  ASSERT_EQ(client->size(), kImageSize);
  ASSERT_NE(client->export_info().FindMetaContext("base:allocation"), nullptr);
  ASSERT_NE(client->export_info().FindMetaContext("qemu:allocation-depth"), nullptr);
  EXPECT_EQ(client->connections(), 2);

  std::vector<uint8_t> expected(kImageSize, 0);
  std::vector<uint8_t> data = RandomBytes(2 * kMiB, 14);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 2 * kMiB));
  std::copy(data.begin(), data.end(), expected.begin() + 2 * kMiB);

  std::vector<std::pair<uint32_t, std::vector<Extent>>> both;
  ASSERT_OK(client->BlockStatusSync(8 * kMiB, 0, &both));
  EXPECT_EQ(both.size(), 2u) << "one extent list per negotiated context";
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> depth,
                       ExtentsOf(*client, "qemu:allocation-depth", both));
  ASSERT_OK_AND_ASSIGN(std::vector<Extent> allocation,
                       ExtentsOf(*client, "base:allocation", both));
  // qemu:allocation-depth: 0 unallocated, 1 allocated in this image (no backing file).
  EXPECT_EQ(ExtentFlagsAt(depth, 0, 0), 0);
  EXPECT_EQ(ExtentFlagsAt(depth, 0, 2 * kMiB), 1);
  EXPECT_EQ(ExtentFlagsAt(depth, 0, 4 * kMiB - 1), 1);
  EXPECT_EQ(ExtentFlagsAt(depth, 0, 4 * kMiB), 0);
  EXPECT_EQ(ExtentFlagsAt(allocation, 0, 0), nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(allocation, 0, 2 * kMiB), 0);

  // qcow2 clusters are 64 KiB: trim and zero whole clusters.
  ASSERT_OK(client->TrimSync(512 * kKiB, 2 * kMiB));
  std::fill(expected.begin() + 2 * kMiB, expected.begin() + 2 * kMiB + 512 * kKiB, 0);
  ASSERT_OK(client->WriteZeroesSync(256 * kKiB, 3 * kMiB));
  std::fill(expected.begin() + 3 * kMiB, expected.begin() + 3 * kMiB + 256 * kKiB, 0);
  ASSERT_OK_AND_ASSIGN(allocation, ExtentsFor(*client, "base:allocation", 8 * kMiB, 0));
  EXPECT_EQ(ExtentFlagsAt(allocation, 0, 2 * kMiB) & nbd::kStateZero, nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(allocation, 0, 3 * kMiB) & nbd::kStateZero, nbd::kStateZero);
  EXPECT_EQ(ExtentFlagsAt(allocation, 0, 2 * kMiB + 600 * kKiB), 0);

  std::vector<uint8_t> read(8 * kMiB);
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(absl::MakeSpan(expected).subspan(0, read.size()), read), "");
  ASSERT_OK(client->FlushSync());

  // The independent reader: qemu-img converts the export (through its own NBD client) to raw.
  std::string converted = dir->File("converted.raw");
  ASSERT_OK(RunCommand({"qemu-img", "convert", "-f", "raw", "-O", "raw", server->uri(),
                        converted}));
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> reference, ReadWholeFile(converted));
  EXPECT_EQ(DescribeDifference(expected, reference), "");
}

TEST(QemuNbdMultiConnTest, FourConnectionsOnTwoRingsShareOneImage) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartQemuNbd(image, "raw", 8));
  ClientOptions options;
  options.connections = 4;
  options.threads = 2;
  CompletionTracker writes, reads;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  EXPECT_EQ(client->connections(), 4);
  EXPECT_EQ(client->threads(), 2);

  // 256 writes of 64 KiB spread over the connections, then one flush (multi-conn: a flush on
  // any connection covers writes completed on all of them), then reads of everything.
  std::vector<uint8_t> data = RandomBytes(16 * kMiB, 15);
  const uint64_t chunk = 64 * kKiB;
  for (uint64_t offset = 0; offset < data.size(); offset += chunk) {
    client->Pwrite(data.data() + offset, chunk, offset, writes.Callback());
  }
  ASSERT_TRUE(writes.WaitFor(data.size() / chunk));
  EXPECT_OK(writes.first_error());
  ASSERT_OK(client->FlushSync());

  std::vector<uint8_t> read(data.size());
  for (uint64_t offset = 0; offset < data.size(); offset += chunk) {
    client->Pread(read.data() + offset, chunk, offset, reads.Callback());
  }
  ASSERT_TRUE(reads.WaitFor(data.size() / chunk));
  EXPECT_OK(reads.first_error());
  EXPECT_EQ(DescribeDifference(data, read), "");
  ASSERT_OK(client->Close());
  EXPECT_EQ(writes.completed(), data.size() / chunk);
  EXPECT_EQ(reads.completed(), data.size() / chunk);

  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> on_disk, ReadWholeFile(image));
  EXPECT_EQ(DescribeDifference(data, absl::MakeSpan(on_disk).subspan(0, data.size())), "");
}

TEST(QemuNbdMultiConnTest, WithoutMultiConnTheClientUsesOneConnectionAndSaysSo) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, 4 * kMiB));
  // --shared=1: qemu-nbd does not advertise NBD_FLAG_CAN_MULTI_CONN.
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartQemuNbd(image, "raw", 1));
  ClientOptions options;
  options.connections = 4;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  EXPECT_FALSE(client->export_info().can_multi_conn());
  EXPECT_EQ(client->connections(), 1);
  ASSERT_FALSE(client->notes().empty());
  EXPECT_THAT(client->notes()[0], HasSubstr("NBD_FLAG_CAN_MULTI_CONN"));
  std::vector<uint8_t> data = RandomBytes(4096, 16);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0));
}

}  // namespace
}  // namespace nbdring::testing
