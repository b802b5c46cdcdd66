// Interop with nbd-server (the reference server): no structured replies, so simple replies
// only; flush, FUA and trim only when its config enables them; no cache, DF, fast zero or
// block status ever. What it cannot do must be refused by the client before sending.
//
// nbd-server runs with -d (no fork), which serves exactly one connection: every client below
// gets its own server (OneShotNbdServer).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/runtime/test_support.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring::testing {
namespace {

using ::nbd::testing::TempDir;

constexpr uint64_t kImageSize = 16 * kMiB;

TEST(NbdServerTest, SimpleRepliesCarryReadsWritesAndZeroes) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, OneShotNbdServer::Start(image));
  // Structured replies are asked for (the default) and refused by nbd-server.
  CompletionTracker reads;
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  const ExportInfo& info = client->export_info();
  EXPECT_EQ(info.name, "default");
  EXPECT_EQ(info.size, kImageSize);
  EXPECT_EQ(info.reply_mode, nbd::ReplyMode::kSimple);
  EXPECT_FALSE(info.read_only());
  EXPECT_FALSE(info.can_flush());
  EXPECT_FALSE(info.can_fua());
  EXPECT_FALSE(info.can_trim());
  EXPECT_FALSE(info.can_cache());
  EXPECT_FALSE(info.can_df());
  EXPECT_FALSE(info.can_fast_zero());
  EXPECT_TRUE(info.can_zero());
  EXPECT_TRUE(info.meta_contexts.empty());

  std::vector<uint8_t> expected(kImageSize, 0);
  std::vector<uint8_t> data = RandomBytes(3 * kMiB + 5, 21);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 3));
  std::copy(data.begin(), data.end(), expected.begin() + 3);
  ASSERT_OK(client->WriteZeroesSync(64 * kKiB, kMiB));
  std::fill(expected.begin() + kMiB, expected.begin() + kMiB + 64 * kKiB, 0);

  // Many small reads at once: simple replies carry no offset, so each must be matched to its
  // request by cookie alone.
  std::vector<uint8_t> read(4 * kMiB, 0xcc);
  const uint64_t chunk = 4096 + 512;
  uint64_t issued = 0;
  for (uint64_t offset = 0; offset < read.size(); offset += chunk) {
    uint64_t length = std::min(chunk, read.size() - offset);
    client->Pread(read.data() + offset, length, offset, reads.Callback());
    ++issued;
  }
  ASSERT_TRUE(reads.WaitFor(issued));
  EXPECT_OK(reads.first_error());
  EXPECT_EQ(DescribeDifference(absl::MakeSpan(expected).subspan(0, read.size()), read), "");
  ASSERT_OK(client->Close());
  EXPECT_EQ(reads.completed(), issued);

  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> on_disk, ReadWholeFile(image));
  EXPECT_EQ(DescribeDifference(expected, on_disk), "");
}

TEST(NbdServerTest, UnsupportedCommandsAndFlagsAreRefusedUpFront) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, OneShotNbdServer::Start(image));
  ClientOptions options;
  options.meta_contexts = {"base:allocation"};
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri(), options));
  // Without structured replies no meta context can be negotiated.
  EXPECT_TRUE(client->export_info().meta_contexts.empty());

  std::vector<uint8_t> buffer(4096, 7);
  ExpectRefused(*client, MakeOperation(Command::kFlush, 0, 0),
                absl::StatusCode::kFailedPrecondition, "NBD_CMD_FLUSH");
  ExpectRefused(*client, MakeOperation(Command::kTrim, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "NBD_CMD_TRIM");
  ExpectRefused(*client, MakeOperation(Command::kCache, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "NBD_CMD_CACHE");
  ExpectRefused(*client, MakeOperation(Command::kBlockStatus, 0, 4096),
                absl::StatusCode::kFailedPrecondition, "meta context");
  ExpectRefused(*client, MakeOperation(Command::kWrite, 0, 4096, buffer.data(), nbd::kCmdFlagFua),
                absl::StatusCode::kInvalidArgument, "NBD_CMD_FLAG_FUA");
  ExpectRefused(*client, MakeOperation(Command::kRead, 0, 4096, buffer.data(), nbd::kCmdFlagDf),
                absl::StatusCode::kInvalidArgument, "NBD_CMD_FLAG_DF");
  ExpectRefused(*client, MakeOperation(Command::kWriteZeroes, 0, 4096, nullptr,
                                       nbd::kCmdFlagFastZero),
                absl::StatusCode::kInvalidArgument, "NBD_CMD_FLAG_FAST_ZERO");
  EXPECT_EQ(client->stats().wire_requests, 0u);

  // The connection is still good for what the server does support.
  ASSERT_OK(client->PwriteSync(buffer.data(), buffer.size(), 0));
  std::vector<uint8_t> read(buffer.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(buffer, read), "");
}

TEST(NbdServerTest, FlushFuaAndTrimWorkWhenConfigured) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, OneShotNbdServer::Start(image, "default",
                                                            {"flush = true", "fua = true",
                                                             "trim = true"}));
  ASSERT_OK_AND_ASSIGN(auto client, ConnectTo(server->uri()));
  ASSERT_TRUE(client->export_info().can_flush());
  ASSERT_TRUE(client->export_info().can_fua());
  ASSERT_TRUE(client->export_info().can_trim());

  std::vector<uint8_t> data = RandomBytes(kMiB, 22);
  ASSERT_OK(client->PwriteSync(data.data(), data.size(), 0, nbd::kCmdFlagFua));
  ASSERT_OK(client->FlushSync());
  ASSERT_OK(client->TrimSync(64 * kKiB, 2 * kMiB));
  std::vector<uint8_t> read(data.size());
  ASSERT_OK(client->PreadSync(read.data(), read.size(), 0));
  EXPECT_EQ(DescribeDifference(data, read), "");
  ASSERT_OK(client->Close());
  ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> on_disk, ReadWholeFile(image));
  EXPECT_EQ(DescribeDifference(data, absl::MakeSpan(on_disk).subspan(0, data.size())), "");
}

TEST(NbdServerTest, ListExportsNamesTheExport) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, OneShotNbdServer::Start(image));
  ClientOptions options;
  options.uri = server->uri();
  ASSERT_OK_AND_ASSIGN(std::vector<nbd::ExportListing> exports, ListExports(options));
  ASSERT_EQ(exports.size(), 1u);
  EXPECT_EQ(exports[0].name, "default");
}

// nbd-server 3.24 answers NBD_OPT_INFO with an export size of 0 (libnbd's nbdinfo shows the
// same 0), while NBD_OPT_GO reports the real size. QueryExport must still report the size a
// connection would see.
TEST(NbdServerTest, QueryExportReportsTheSizeAConnectionSees) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.raw");
  ASSERT_OK(CreateSparseFile(image, kImageSize));
  ASSERT_OK_AND_ASSIGN(auto server, OneShotNbdServer::Start(image));
  ClientOptions options;
  options.uri = server->uri();
  ASSERT_OK_AND_ASSIGN(ExportQuery query, QueryExport(options));
  EXPECT_EQ(query.info.size, kImageSize);
  EXPECT_EQ(query.info.reply_mode, nbd::ReplyMode::kSimple);
  EXPECT_TRUE(query.available_meta_contexts.empty());
}

}  // namespace
}  // namespace nbdring::testing
