// Runs the real nbd-copy binary against nbdkit servers started by each test: NBD to file
// (checked against libnbd's nbdcopy), file to NBD and back, sparse copies that keep holes or
// zero a dirty destination, pipes both ways, and the failures a copy must report (source and
// destination I/O errors with their offset, a destination too small or read-only, a stalled
// server, a bad command line).
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/server_process.h"

namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1024 * 1024;

struct Outcome {
  int exit_status = -1;
  std::string err;
};

std::string CopyPath() {
  const char* runfiles = std::getenv("TEST_SRCDIR");
  return absl::StrCat(runfiles != nullptr ? runfiles : ".", "/nbdring/tools/nbd-copy");
}

std::string Quote(const std::string& text) { return absl::StrCat("'", text, "'"); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string RandomBytes(size_t length, uint32_t seed) {
  std::mt19937 generator(seed);
  std::string bytes(length, '\0');
  for (char& byte : bytes) byte = static_cast<char>(generator() & 0xff);
  return bytes;
}

// Runs `shell_command` (which names the programs itself) with stderr captured.
Outcome RunShell(const std::string& shell_command, const TempDir& dir) {
  const std::string stderr_path = dir.File("copy.stderr");
  const std::string command = absl::StrCat(shell_command, " 2>", stderr_path);
  const int status = std::system(command.c_str());
  Outcome outcome;
  outcome.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  outcome.err = ReadFile(stderr_path);
  std::cerr << "$ " << command << "\n" << outcome.err;
  return outcome;
}

// nbd-copy with `arguments`, each quoted, stdin from /dev/null.
Outcome RunCopy(const std::vector<std::string>& arguments, const TempDir& dir) {
  std::string command = CopyPath();
  for (const std::string& argument : arguments) absl::StrAppend(&command, " ", Quote(argument));
  return RunShell(absl::StrCat(command, " </dev/null"), dir);
}

std::unique_ptr<ServerProcess> StartNbdkit(const std::vector<std::string>& args) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::StartNbdkit(args);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::unique_ptr<nbdring::Client> Connect(const ServerProcess& server) {
  nbdring::ClientOptions options;
  options.uri = server.uri();
  absl::StatusOr<std::unique_ptr<nbdring::Client>> client = nbdring::Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

std::string ReadExport(nbdring::Client& client) {
  std::string bytes(client.size(), '\0');
  for (uint64_t offset = 0; offset < bytes.size(); offset += 4 * kMiB) {
    const uint64_t length = std::min<uint64_t>(4 * kMiB, bytes.size() - offset);
    absl::Status status = client.PreadSync(bytes.data() + offset, length, offset);
    EXPECT_TRUE(status.ok()) << status;
    if (!status.ok()) break;
  }
  return bytes;
}

class NbdCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<TempDir>> dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *std::move(dir);
  }
  std::string File(const std::string& name) const { return dir_->File(name); }

  std::unique_ptr<TempDir> dir_;
};

TEST_F(NbdCopyTest, PatternExportToFileMatchesNbdcopy) {
  std::unique_ptr<ServerProcess> server = StartNbdkit({"pattern", "64M"});
  ASSERT_NE(server, nullptr);
  const Outcome ours = RunCopy({server->uri(), File("ours.img")}, *dir_);
  ASSERT_EQ(ours.exit_status, 0) << ours.err;
  const Outcome reference =
      RunShell(absl::StrCat("nbdcopy ", Quote(server->uri()), " ", Quote(File("reference.img"))),
               *dir_);
  ASSERT_EQ(reference.exit_status, 0) << reference.err;

  const std::string copied = ReadFile(File("ours.img"));
  ASSERT_EQ(copied.size(), 64 * kMiB);
  EXPECT_TRUE(copied == ReadFile(File("reference.img"))) << "nbd-copy and nbdcopy differ";
  // The pattern plugin stores each 8-byte word's own offset, big-endian.
  for (uint64_t offset : {uint64_t{0}, uint64_t{8}, 33 * kMiB + 8, 64 * kMiB - 8}) {
    uint64_t word = 0;
    for (int i = 0; i < 8; ++i) word = (word << 8) | static_cast<unsigned char>(copied[offset + i]);
    EXPECT_EQ(word, offset);
  }
}

TEST_F(NbdCopyTest, FileToMemoryExportAndBackIsByteIdentical) {
  const std::string original = RandomBytes(16 * kMiB + 12345, 7);
  WriteFile(File("original.img"), original);
  std::unique_ptr<ServerProcess> server = StartNbdkit({"memory", "17M"});
  ASSERT_NE(server, nullptr);

  Outcome outcome = RunCopy({"--connections=2", "--request-size=64k", File("original.img"),
                             server->uri()},
                            *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  // The export is 17 MiB: the file is copied, the rest of the export stays as it was.
  std::unique_ptr<nbdring::Client> client = Connect(*server);
  ASSERT_NE(client, nullptr);
  const std::string exported = ReadExport(*client);
  EXPECT_TRUE(exported.substr(0, original.size()) == original);
  EXPECT_EQ(exported.find_first_not_of('\0', original.size()), std::string::npos);

  outcome = RunCopy({"--request-size=1m", server->uri(), File("back.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const std::string back = ReadFile(File("back.img"));
  ASSERT_EQ(back.size(), 17 * kMiB);
  EXPECT_TRUE(back == exported);
}

// A 64 MiB memory export holding data in two places only.
class SparseSourceTest : public NbdCopyTest {
 protected:
  void SetUp() override {
    NbdCopyTest::SetUp();
    source_ = StartNbdkit({"memory", "64M"});
    ASSERT_NE(source_, nullptr);
    std::unique_ptr<nbdring::Client> client = Connect(*source_);
    ASSERT_NE(client, nullptr);
    first_ = RandomBytes(kMiB, 1);
    second_ = RandomBytes(kMiB / 2, 2);
    ASSERT_TRUE(client->PwriteSync(first_.data(), first_.size(), kFirstOffset).ok());
    ASSERT_TRUE(client->PwriteSync(second_.data(), second_.size(), kSecondOffset).ok());
    ASSERT_TRUE(client->Close().ok());
  }

  // What the source reads as, with `background` everywhere but the two data ranges.
  std::string Expected(char background) const {
    std::string bytes(64 * kMiB, background);
    bytes.replace(kFirstOffset, first_.size(), first_);
    bytes.replace(kSecondOffset, second_.size(), second_);
    return bytes;
  }

  // A memory export of the same size whose every byte is 0xAA.
  std::unique_ptr<ServerProcess> StartDirtyDestination() {
    std::unique_ptr<ServerProcess> destination = StartNbdkit({"memory", "64M"});
    if (destination == nullptr) return nullptr;
    std::unique_ptr<nbdring::Client> client = Connect(*destination);
    if (client == nullptr) return nullptr;
    const std::string dirt(4 * kMiB, '\xAA');
    for (uint64_t offset = 0; offset < 64 * kMiB; offset += dirt.size()) {
      EXPECT_TRUE(client->PwriteSync(dirt.data(), dirt.size(), offset).ok());
    }
    EXPECT_TRUE(client->Close().ok());
    return destination;
  }

  static constexpr uint64_t kFirstOffset = 3 * kMiB;
  static constexpr uint64_t kSecondOffset = 40 * kMiB + 64 * 1024;
  std::unique_ptr<ServerProcess> source_;
  std::string first_;
  std::string second_;
};

TEST_F(SparseSourceTest, FileDestinationKeepsTheHoles) {
  const Outcome outcome = RunCopy({source_->uri(), File("sparse.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  struct stat status;
  ASSERT_EQ(stat(File("sparse.img").c_str(), &status), 0);
  EXPECT_EQ(static_cast<uint64_t>(status.st_size), 64 * kMiB);
  // 1.5 MiB of data; allow for the file system's block and extent granularity.
  EXPECT_LE(static_cast<uint64_t>(status.st_blocks) * 512, 4 * kMiB)
      << "the zero ranges were written instead of left as holes";
  EXPECT_TRUE(ReadFile(File("sparse.img")) == Expected('\0'));
}

TEST_F(SparseSourceTest, NoExtentsWritesEveryByte) {
  const Outcome outcome = RunCopy({"--no-extents", source_->uri(), File("full.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  struct stat status;
  ASSERT_EQ(stat(File("full.img").c_str(), &status), 0);
  EXPECT_GE(static_cast<uint64_t>(status.st_blocks) * 512, 64 * kMiB);
  EXPECT_TRUE(ReadFile(File("full.img")) == Expected('\0'));
}

TEST_F(SparseSourceTest, ZeroRangesAreZeroedOnADirtyExport) {
  std::unique_ptr<ServerProcess> destination = StartDirtyDestination();
  ASSERT_NE(destination, nullptr);
  const Outcome outcome = RunCopy({"--flush", source_->uri(), destination->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  std::unique_ptr<nbdring::Client> client = Connect(*destination);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(ReadExport(*client) == Expected('\0'));
}

TEST_F(SparseSourceTest, ZeroRangesAreZeroedWithBuffersWhenTheExportCannotZero) {
  // The nozero filter hides NBD_FLAG_SEND_WRITE_ZEROES, so zeroes must travel as data.
  std::unique_ptr<ServerProcess> destination = StartDirtyDestination();
  ASSERT_NE(destination, nullptr);
  std::unique_ptr<ServerProcess> no_zero =
      StartNbdkit({"--filter=nozero", "nbd", absl::StrCat("uri=", destination->uri())});
  ASSERT_NE(no_zero, nullptr);
  {
    std::unique_ptr<nbdring::Client> probe = Connect(*no_zero);
    ASSERT_NE(probe, nullptr);
    ASSERT_FALSE(probe->export_info().can_zero());
  }
  const Outcome outcome = RunCopy({source_->uri(), no_zero->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  std::unique_ptr<nbdring::Client> client = Connect(*destination);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(ReadExport(*client) == Expected('\0'));
}

TEST_F(SparseSourceTest, DestinationIsZeroSkipsZeroRanges) {
  // On a dirty destination the skipped ranges keep their 0xAA: proof they were not touched.
  std::unique_ptr<ServerProcess> destination = StartDirtyDestination();
  ASSERT_NE(destination, nullptr);
  const Outcome outcome =
      RunCopy({"--destination-is-zero", source_->uri(), destination->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  std::unique_ptr<nbdring::Client> client = Connect(*destination);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(ReadExport(*client) == Expected('\xAA'));
}

TEST_F(NbdCopyTest, SparseFileSourceKeepsHolesInFileDestination) {
  const std::string data = RandomBytes(kMiB, 3);
  {
    std::ofstream out(File("sparse-source.img"), std::ios::binary);
    out.seekp(20 * kMiB);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  ASSERT_EQ(truncate(File("sparse-source.img").c_str(), 48 * kMiB), 0);
  const Outcome outcome = RunCopy({File("sparse-source.img"), File("copy.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  struct stat status;
  ASSERT_EQ(stat(File("copy.img").c_str(), &status), 0);
  EXPECT_EQ(static_cast<uint64_t>(status.st_size), 48 * kMiB);
  EXPECT_LE(static_cast<uint64_t>(status.st_blocks) * 512, 4 * kMiB);
  EXPECT_TRUE(ReadFile(File("copy.img")) == ReadFile(File("sparse-source.img")));
}

TEST_F(NbdCopyTest, QemuNbdExtentsKeepHolesToo) {
  const std::string data = RandomBytes(kMiB, 9);
  {
    std::ofstream out(File("served.img"), std::ios::binary);
    out.seekp(10 * kMiB);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  ASSERT_EQ(truncate(File("served.img").c_str(), 32 * kMiB), 0);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::StartQemuNbd(File("served.img"), "raw");
  ASSERT_TRUE(server.ok()) << server.status();
  const Outcome outcome = RunCopy({(*server)->uri(), File("copy.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  struct stat status;
  ASSERT_EQ(stat(File("copy.img").c_str(), &status), 0);
  EXPECT_EQ(static_cast<uint64_t>(status.st_size), 32 * kMiB);
  EXPECT_LE(static_cast<uint64_t>(status.st_blocks) * 512, 4 * kMiB);
  EXPECT_TRUE(ReadFile(File("copy.img")) == ReadFile(File("served.img")));
}

TEST_F(NbdCopyTest, SourceWithoutStructuredRepliesIsCopiedWhole) {
  // --no-sr: no structured replies, so no base:allocation; every byte is read.
  std::unique_ptr<ServerProcess> server = StartNbdkit({"--no-sr", "pattern", "8M"});
  ASSERT_NE(server, nullptr);
  Outcome outcome = RunCopy({server->uri(), File("ours.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunShell(
      absl::StrCat("nbdcopy ", Quote(server->uri()), " ", Quote(File("reference.img"))), *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const std::string copied = ReadFile(File("ours.img"));
  EXPECT_EQ(copied.size(), 8 * kMiB);
  EXPECT_TRUE(copied == ReadFile(File("reference.img")));
}

TEST_F(NbdCopyTest, PipesBothWays) {
  const std::string original = RandomBytes(8 * kMiB + 777, 4);
  WriteFile(File("original.img"), original);
  std::unique_ptr<ServerProcess> server = StartNbdkit({"memory", "9M"});
  ASSERT_NE(server, nullptr);

  Outcome outcome = RunShell(absl::StrCat("cat ", Quote(File("original.img")), " | ", CopyPath(),
                                          " --request-size=64k - ", Quote(server->uri())),
                             *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunShell(absl::StrCat(CopyPath(), " --request-size=64k ", Quote(server->uri()),
                                  " - | cat > ", Quote(File("piped.img"))),
                     *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  std::string expected = original;
  expected.resize(9 * kMiB, '\0');
  EXPECT_TRUE(ReadFile(File("piped.img")) == expected);
}

TEST_F(NbdCopyTest, StreamLargerThanTheExportFails) {
  WriteFile(File("big.img"), RandomBytes(2 * kMiB, 5));
  std::unique_ptr<ServerProcess> server = StartNbdkit({"memory", "1M"});
  ASSERT_NE(server, nullptr);
  const Outcome outcome = RunShell(
      absl::StrCat(CopyPath(), " - ", Quote(server->uri()), " < ", Quote(File("big.img"))),
      *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("at offset 1048576"));
  EXPECT_THAT(outcome.err, HasSubstr("the source is larger than the destination (1048576 bytes)"));
}

TEST_F(NbdCopyTest, NullDestinationReadsEverythingAndShowsProgress) {
  std::unique_ptr<ServerProcess> server = StartNbdkit({"pattern", "64M"});
  ASSERT_NE(server, nullptr);
  const Outcome outcome = RunCopy({"-p", server->uri(), "null:"}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_THAT(outcome.err, HasSubstr("64.0 MiB / 64.0 MiB   100.0%"));
}

TEST_F(NbdCopyTest, ProgressReachesTheEndWhenTheCopyNeedsNoNetwork) {
  // File to null: finishes synchronously, before the first progress tick.
  WriteFile(File("small.img"), RandomBytes(3 * kMiB, 8));
  const Outcome outcome = RunCopy({"--progress", File("small.img"), "null:"}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_THAT(outcome.err, HasSubstr("3.0 MiB / 3.0 MiB   100.0%"));
}

TEST_F(NbdCopyTest, SourceReadErrorNamesTheSideAndOffset) {
  // Reads fail from 32 MiB on; with one request at a time the first failure is exactly there.
  std::unique_ptr<ServerProcess> server = StartNbdkit(
      {"eval", "get_size=echo 64M",
       "pread=if [ $4 -ge 33554432 ]; then echo 'EIO injected' >&2; exit 1; fi; "
       "head -c $3 /dev/zero"});
  ASSERT_NE(server, nullptr);
  const Outcome outcome = RunCopy({"--connections=1", "--requests=1", "--request-size=1m",
                                   server->uri(), File("out.img")},
                                  *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("reading source"));
  EXPECT_THAT(outcome.err, HasSubstr("at offset 33554432 (length 1048576) failed"));
  EXPECT_THAT(outcome.err, HasSubstr("NBD_EIO"));
}

TEST_F(NbdCopyTest, EverySourceReadFailingStopsTheCopy) {
  std::unique_ptr<ServerProcess> server =
      StartNbdkit({"--filter=error", "pattern", "64M", "error-pread-rate=100%"});
  ASSERT_NE(server, nullptr);
  const Outcome outcome = RunCopy({server->uri(), "null:"}, *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("reading source"));
  EXPECT_THAT(outcome.err, HasSubstr("NBD_EIO"));
}

TEST_F(NbdCopyTest, DestinationWriteErrorNamesTheSideAndOffset) {
  WriteFile(File("source.img"), RandomBytes(4 * kMiB, 6));
  std::unique_ptr<ServerProcess> server = StartNbdkit(
      {"--filter=error", "memory", "4M", "error=ENOSPC", "error-pwrite-rate=100%"});
  ASSERT_NE(server, nullptr);
  const Outcome outcome = RunCopy({"--connections=1", "--requests=1", File("source.img"),
                                   server->uri()},
                                  *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("writing destination"));
  EXPECT_THAT(outcome.err, HasSubstr("at offset 0 (length 262144) failed"));
  EXPECT_THAT(outcome.err, HasSubstr("NBD_ENOSPC"));
}

TEST_F(NbdCopyTest, SmallerDestinationFailsBeforeWritingAnything) {
  std::unique_ptr<ServerProcess> source = StartNbdkit({"pattern", "64M"});
  std::unique_ptr<ServerProcess> destination = StartNbdkit({"memory", "32M"});
  ASSERT_NE(source, nullptr);
  ASSERT_NE(destination, nullptr);
  const Outcome outcome = RunCopy({source->uri(), destination->uri()}, *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("is smaller than the source: 33554432 bytes, but the "
                                     "source"));
  EXPECT_THAT(outcome.err, HasSubstr("has 67108864 bytes; nothing was written"));
  std::unique_ptr<nbdring::Client> client = Connect(*destination);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(ReadExport(*client).find_first_not_of('\0'), std::string::npos);
}

TEST_F(NbdCopyTest, ReadOnlyDestinationIsRefused) {
  std::unique_ptr<ServerProcess> source = StartNbdkit({"pattern", "1M"});
  std::unique_ptr<ServerProcess> destination = StartNbdkit({"-r", "memory", "1M"});
  ASSERT_NE(source, nullptr);
  ASSERT_NE(destination, nullptr);
  const Outcome outcome = RunCopy({source->uri(), destination->uri()}, *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("is read-only"));
}

TEST_F(NbdCopyTest, StalledServerEndsTheCopyAfterTheTimeout) {
  std::unique_ptr<ServerProcess> server =
      StartNbdkit({"--filter=delay", "pattern", "16M", "delay-read=20"});
  ASSERT_NE(server, nullptr);
  const absl::Time start = absl::Now();
  const Outcome outcome = RunCopy({"--timeout=1", server->uri(), "null:"}, *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  EXPECT_THAT(outcome.err, HasSubstr("reading source"));
  EXPECT_THAT(outcome.err, HasSubstr("got no reply within 1000 ms"));
}

TEST_F(NbdCopyTest, BadCommandLinesAreUsageErrors) {
  Outcome outcome = RunCopy({"--request-size=12q", "a", "b"}, *dir_);
  EXPECT_EQ(outcome.exit_status, 2);
  EXPECT_THAT(outcome.err, HasSubstr("\"12q\" has an unknown unit \"q\""));
  outcome = RunCopy({"only-one"}, *dir_);
  EXPECT_EQ(outcome.exit_status, 2);
  EXPECT_THAT(outcome.err, HasSubstr("expected SOURCE and DESTINATION, got 1 argument(s)"));
  outcome = RunCopy({"--connections=0", "a", "b"}, *dir_);
  EXPECT_EQ(outcome.exit_status, 2);
  outcome = RunCopy({"null:", File("x")}, *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("null: can only be a destination"));
  outcome = RunCopy({File("missing.img"), "null:"}, *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("cannot open source"));
}

}  // namespace
