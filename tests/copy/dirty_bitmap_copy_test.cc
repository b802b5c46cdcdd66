// nbd-copy --dirty-bitmap against the real thing: a qcow2 image copied in full, then given a
// persistent dirty bitmap, changed (data rewritten, ranges zeroed over data and over holes),
// and exported by qemu-nbd -B. The incremental copy must make the destination (a file, or an
// nbdkit file export) equal to qemu-img convert's copy of the image byte for byte while reading
// only about the dirty bytes; a bitmap the server does not offer must fail without touching
// the destination. nbd-info --map shows the same bitmap.
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/copy/copy_test_support.h"
#include "tests/testing/server_process.h"

namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::nbdcopy::testing::CopyPath;
using ::nbdcopy::testing::kMiB;
using ::nbdcopy::testing::Outcome;
using ::nbdcopy::testing::Quote;
using ::nbdcopy::testing::ReadFile;
using ::nbdcopy::testing::RunShellCapturingStderr;
using ::nbdcopy::testing::ToolPath;
using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kImageBytes = 8 * kMiB;
// qemu-img bitmap --add's default granularity (the qcow2 cluster size): dirty ranges are
// whole multiples of it.
constexpr uint64_t kGranularityBytes = 64 * kKiB;
// Written after the bitmap was added: data at 1M (64k) and 6M (100k, two granules), zeroes at
// 3M (128k, over data) and 5M (64k, over data). Only the two data ranges need reading.
constexpr uint64_t kDirtyDataBytes = 64 * kKiB + 2 * kGranularityBytes;
// A byte of a clean range, which the incremental copy must not visit.
constexpr uint64_t kCleanOffset = 2 * kMiB;

// The line of `err` that --stats wrote for the source, and the bytes it says were read.
uint64_t SourceBytesRead(const std::string& err) {
  for (absl::string_view line : absl::StrSplit(err, '\n')) {
    if (!absl::StartsWith(line, "nbd-copy: source ")) continue;
    const size_t end = line.find(" bytes read");
    if (end == absl::string_view::npos) continue;
    const size_t start = line.rfind(' ', end - 1) + 1;
    uint64_t bytes = 0;
    if (absl::SimpleAtoi(line.substr(start, end - start), &bytes)) return bytes;
  }
  ADD_FAILURE() << "no source statistics in:\n" << err;
  return UINT64_MAX;
}

int NonEmptyLines(const std::string& text) {
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) lines += line.empty() ? 0 : 1;
  return lines;
}

class DirtyBitmapCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *std::move(dir);
    image_ = dir_->File("disk.qcow2");
    destination_ = dir_->File("backup.raw");
    expected_ = dir_->File("expected.raw");

    ASSERT_EQ(Shell(absl::StrCat("qemu-img create -q -f qcow2 ", Quote(image_), " ",
                                 kImageBytes)).exit_status, 0);
    ASSERT_EQ(Shell(absl::StrCat("qemu-io -f qcow2 -c 'write -P 0x11 0 4M' "
                                 "-c 'write -P 0x44 5M 1M' ", Quote(image_), " >/dev/null"))
                  .exit_status, 0);
    {  // The previous copy: a full one, from an export without a bitmap.
      auto server = ServerProcess::StartQemuNbd(image_, "qcow2", 1, {"-r"});
      ASSERT_TRUE(server.ok()) << server.status();
      ASSERT_EQ(Copy({(*server)->uri(), destination_}).exit_status, 0);
    }
    ASSERT_EQ(Shell(absl::StrCat("qemu-img bitmap --add ", Quote(image_), " b0")).exit_status, 0);
    ASSERT_EQ(Shell(absl::StrCat("qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' "
                                 "-c 'write -z 3M 128k' -c 'write -P 0x33 6M 100k' "
                                 "-c 'write -z 5M 64k' ", Quote(image_), " >/dev/null"))
                  .exit_status, 0);
    ASSERT_EQ(Shell(absl::StrCat("qemu-img convert -f qcow2 -O raw ", Quote(image_), " ",
                                 Quote(expected_))).exit_status, 0);
    ASSERT_NE(ReadFile(destination_), ReadFile(expected_)) << "the changes changed nothing";
    // Marks a clean byte: had the copy visited it, it would be 0x11 again.
    std::string marked = ReadFile(destination_);
    marked[kCleanOffset] = '\xee';
    WriteFile(destination_, marked);

    auto server = ServerProcess::StartQemuNbd(image_, "qcow2", 1, {"-r", "-B", "b0"});
    ASSERT_TRUE(server.ok()) << server.status();
    source_ = *std::move(server);
  }

  Outcome Shell(const std::string& command) {
    return RunShellCapturingStderr(command, dir_->File("command.stderr"));
  }
  Outcome Copy(const std::vector<std::string>& arguments) {
    std::string command = CopyPath();
    for (const std::string& argument : arguments) absl::StrAppend(&command, " ", Quote(argument));
    return Shell(absl::StrCat(command, " </dev/null"));
  }
  static void WriteFile(const std::string& path, const std::string& bytes) {
    FILE* out = std::fopen(path.c_str(), "wb");
    ASSERT_NE(out, nullptr) << path;
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), out), bytes.size());
    ASSERT_EQ(std::fclose(out), 0);
  }
  // The destination must equal the image everywhere except the marked clean byte.
  void ExpectIncrementalResult(const std::string& copied) {
    std::string expected = ReadFile(expected_);
    ASSERT_EQ(copied.size(), expected.size());
    EXPECT_EQ(copied[kCleanOffset], '\xee') << "a clean range was copied";
    expected[kCleanOffset] = '\xee';
    EXPECT_TRUE(copied == expected) << "the incremental copy differs from qemu-img convert's";
  }

  std::unique_ptr<TempDir> dir_;
  std::string image_;
  std::string destination_;
  std::string expected_;
  std::unique_ptr<ServerProcess> source_;
};

TEST_F(DirtyBitmapCopyTest, CopiesOnlyTheDirtyExtentsToAFile) {
  const Outcome copy = Copy({"--dirty-bitmap=b0", "--stats", source_->uri(), destination_});
  ASSERT_EQ(copy.exit_status, 0) << copy.err;
  ExpectIncrementalResult(ReadFile(destination_));
  const uint64_t read_bytes = SourceBytesRead(copy.err);
  EXPECT_GT(read_bytes, 0u);
  EXPECT_LE(read_bytes, kDirtyDataBytes) << "read more than the dirty data";
  EXPECT_LT(read_bytes, kImageBytes / 16);
}

TEST_F(DirtyBitmapCopyTest, CopiesOnlyTheDirtyExtentsToAnNbdExport) {
  std::unique_ptr<ServerProcess> destination;
  {
    auto server = ServerProcess::StartNbdkit({"file", destination_});
    ASSERT_TRUE(server.ok()) << server.status();
    destination = *std::move(server);
  }
  const Outcome copy =
      Copy({"--dirty-bitmap=b0", "--stats", source_->uri(), destination->uri()});
  ASSERT_EQ(copy.exit_status, 0) << copy.err;
  destination.reset();  // nbdkit has written everything once it has exited
  ExpectIncrementalResult(ReadFile(destination_));
  EXPECT_LE(SourceBytesRead(copy.err), kDirtyDataBytes);
}

TEST_F(DirtyBitmapCopyTest, ABitmapTheServerDoesNotOfferFailsAndWritesNothing) {
  const std::string before = ReadFile(destination_);
  const Outcome copy = Copy({"--dirty-bitmap=nosuch", source_->uri(), destination_});
  EXPECT_EQ(copy.exit_status, 1);
  EXPECT_THAT(copy.err, HasSubstr("nosuch"));
  EXPECT_EQ(NonEmptyLines(copy.err), 1) << copy.err;
  EXPECT_TRUE(ReadFile(destination_) == before) << "the destination was changed";
}

TEST_F(DirtyBitmapCopyTest, ASmallerDestinationCannotHoldThePreviousCopy) {
  ASSERT_EQ(truncate(destination_.c_str(), kImageBytes / 2), 0);
  const Outcome copy = Copy({"--dirty-bitmap=b0", source_->uri(), destination_});
  EXPECT_EQ(copy.exit_status, 1);
  EXPECT_THAT(copy.err, HasSubstr(destination_));
  EXPECT_EQ(ReadFile(destination_).size(), kImageBytes / 2) << "the destination was resized";
}

TEST_F(DirtyBitmapCopyTest, AMissingDestinationIsNotCreated) {
  const std::string missing = dir_->File("missing.raw");
  const Outcome copy = Copy({"--dirty-bitmap=b0", source_->uri(), missing});
  EXPECT_EQ(copy.exit_status, 1);
  EXPECT_THAT(copy.err, HasSubstr(missing));
  EXPECT_NE(access(missing.c_str(), F_OK), 0) << "an empty destination was left behind";
}

TEST_F(DirtyBitmapCopyTest, NbdInfoMapsTheBitmap) {
  const std::string out_path = dir_->File("map.out");
  const Outcome info = Shell(absl::StrCat(ToolPath("nbd-info"), " --map=qemu:dirty-bitmap:b0 ",
                                          Quote(source_->uri()), " >", Quote(out_path)));
  ASSERT_EQ(info.exit_status, 0) << info.err;
  const std::string map = ReadFile(out_path);
  EXPECT_THAT(map, HasSubstr("         0     1048576    0  clean\n"));
  EXPECT_THAT(map, HasSubstr("   1048576       65536    1  dirty\n"));
  EXPECT_THAT(map, HasSubstr("   3145728      131072    1  dirty\n"));
  EXPECT_THAT(map, HasSubstr("   5242880       65536    1  dirty\n"));
  EXPECT_THAT(map, HasSubstr("   6291456      131072    1  dirty\n"));
}

}  // namespace
