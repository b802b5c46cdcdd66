// Runs the real nbd-copy binary against nbdkit and qemu-nbd servers started by each test: NBD
// to file (checked against libnbd's nbdcopy and qemu-img), file to NBD and back, qcow2 both
// ways, sparse copies that keep holes or zero a dirty destination, sources bigger than one map
// window and servers that describe fewer extents than asked, minimum block sizes on either
// side, pipes both ways, and the failures a copy must report (source and destination I/O
// errors with their offset, a server killed mid-copy, a destination too small or read-only, a
// stalled server, a bad command line).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/copy/copy_test_support.h"
#include "tests/testing/server_process.h"

namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::testing::HasSubstr;

using ::nbdcopy::testing::kMiB;
constexpr uint64_t kGiB = 1024 * kMiB;

using ::nbdcopy::testing::CopyPath;
using ::nbdcopy::testing::Outcome;
using ::nbdcopy::testing::Quote;
using ::nbdcopy::testing::RunShellCapturingStderr;
using ::nbdcopy::testing::ReadFile;

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
  return RunShellCapturingStderr(shell_command, dir.File("copy.stderr"));
}

// nbd-copy with `arguments`, each quoted, stdin from /dev/null.
Outcome RunCopy(const std::vector<std::string>& arguments, const TempDir& dir) {
  std::string command = CopyPath();
  for (const std::string& argument : arguments) absl::StrAppend(&command, " ", Quote(argument));
  return RunShell(absl::StrCat(command, " </dev/null"), dir);
}

// What `shell_command` prints on stdout.
std::string CommandOutput(const std::string& shell_command) {
  std::string output;
  FILE* pipe = popen(shell_command.c_str(), "r");
  if (pipe == nullptr) return output;
  char buffer[4096];
  size_t got;
  while ((got = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, got);
  pclose(pipe);
  return output;
}

// sha256sum's digest of `path`, as an independent second opinion next to byte comparisons.
std::string Sha256(const std::string& path) {
  const std::string line = CommandOutput(absl::StrCat("sha256sum ", Quote(path)));
  return line.substr(0, line.find(' '));
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat status;
  if (stat(path.c_str(), &status) != 0) return UINT64_MAX;
  return static_cast<uint64_t>(status.st_blocks) * 512;
}

// Known bytes at `offset` in an image that is zero everywhere else.
struct Piece {
  uint64_t offset;
  std::string bytes;
};

// A sparse file of `size` bytes holding `pieces` over holes.
void WriteSparseImage(const std::string& path, uint64_t size, const std::vector<Piece>& pieces) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
  for (const Piece& piece : pieces) {
    ASSERT_EQ(pwrite(fd, piece.bytes.data(), piece.bytes.size(), static_cast<off_t>(piece.offset)),
              static_cast<ssize_t>(piece.bytes.size()));
  }
  close(fd);
}

// Checks that `path` is `size` bytes reading as `pieces` over zeroes, with at most
// `max_allocated` bytes allocated. Only the file's data segments (SEEK_DATA/SEEK_HOLE) are
// read, which keeps multi-GiB sparse images quick to check: holes read as zero by definition.
void ExpectSparseImage(const std::string& path, uint64_t size, const std::vector<Piece>& pieces,
                       uint64_t max_allocated) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  struct stat status;
  ASSERT_EQ(fstat(fd, &status), 0);
  EXPECT_EQ(static_cast<uint64_t>(status.st_size), size);
  EXPECT_LE(static_cast<uint64_t>(status.st_blocks) * 512, max_allocated)
      << "zero ranges were written instead of left as holes";
  std::string block;
  for (const Piece& piece : pieces) {
    block.assign(piece.bytes.size(), '\0');
    ASSERT_EQ(pread(fd, block.data(), block.size(), static_cast<off_t>(piece.offset)),
              static_cast<ssize_t>(block.size()));
    EXPECT_TRUE(block == piece.bytes) << "the piece at offset " << piece.offset << " differs";
  }
  off_t position = 0;
  while (true) {
    const off_t data = lseek(fd, position, SEEK_DATA);
    if (data < 0) break;  // ENXIO: nothing but holes from here on
    const off_t hole = lseek(fd, data, SEEK_HOLE);
    ASSERT_GT(hole, data);
    for (uint64_t offset = static_cast<uint64_t>(data); offset < static_cast<uint64_t>(hole);
         offset += 4 * kMiB) {
      const uint64_t length = std::min<uint64_t>(4 * kMiB, static_cast<uint64_t>(hole) - offset);
      block.assign(length, '\0');
      ASSERT_EQ(pread(fd, block.data(), length, static_cast<off_t>(offset)),
                static_cast<ssize_t>(length));
      std::string expected(length, '\0');
      for (const Piece& piece : pieces) {
        const uint64_t start = std::max(offset, piece.offset);
        const uint64_t end = std::min(offset + length, piece.offset + piece.bytes.size());
        if (start < end) {
          expected.replace(start - offset, end - start, piece.bytes, start - piece.offset,
                           end - start);
        }
      }
      EXPECT_TRUE(block == expected) << "bytes differ in [" << offset << ", " << offset + length
                                     << ")";
    }
    position = hole;
  }
  close(fd);
}

// nbd-copy started in the background with `arguments`, stderr and stdout in `log_path`.
pid_t StartCopy(const std::vector<std::string>& arguments, const std::string& log_path) {
  std::vector<std::string> argv = {CopyPath()};
  argv.insert(argv.end(), arguments.begin(), arguments.end());
  absl::StatusOr<pid_t> pid = ServerProcess::Launch(argv, log_path);
  EXPECT_TRUE(pid.ok()) << pid.status();
  return pid.ok() ? *pid : -1;
}

// Polls `path` until it contains `text`; false after `timeout`.
bool WaitForText(const std::string& path, const std::string& text, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (absl::StrContains(ReadFile(path), text)) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

// The exit status of `pid`, or nothing if it is still running after `timeout` (it is then
// killed, so no test leaves a hung copy behind).
std::optional<int> WaitForExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (absl::Now() < deadline) {
    const pid_t reaped = waitpid(pid, &status, WNOHANG);
    if (reaped == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (reaped < 0) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return std::nullopt;
}

// The lines of an nbdkit log (the log filter) that record requests of `action`, e.g. "Read".
std::vector<std::string> LoggedRequests(const std::string& log_path, const std::string& action) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(ReadFile(log_path), '\n')) {
    if (absl::StrContains(line, absl::StrCat(" ", action, " id="))) lines.emplace_back(line);
  }
  return lines;
}

// A hexadecimal field ("offset=0x1000") of a logged request.
uint64_t LoggedField(const std::string& line, const std::string& field) {
  const size_t start = line.find(absl::StrCat(" ", field, "=0x"));
  if (start == std::string::npos) return UINT64_MAX;
  absl::string_view value(line);
  value.remove_prefix(start + field.size() + 4);
  value = value.substr(0, value.find(' '));
  uint64_t number = 0;
  return absl::SimpleHexAtoi(value, &number) ? number : UINT64_MAX;
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
  // -S 0 as well: like nbdcopy, nbd-copy otherwise finds the zero blocks in the data it reads.
  const Outcome outcome =
      RunCopy({"--no-extents", "-S", "0", source_->uri(), File("full.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  struct stat status;
  ASSERT_EQ(stat(File("full.img").c_str(), &status), 0);
  EXPECT_GE(static_cast<uint64_t>(status.st_blocks) * 512, 64 * kMiB);
  EXPECT_TRUE(ReadFile(File("full.img")) == Expected('\0'));
}

TEST_F(SparseSourceTest, StatsPrintCountersAndLatencies) {
  std::unique_ptr<ServerProcess> destination = StartNbdkit({"memory", "64M"});
  ASSERT_NE(destination, nullptr);
  const Outcome outcome = RunCopy({"--stats", source_->uri(), destination->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_THAT(outcome.err, HasSubstr("nbd-copy: source " + source_->uri() + ": "));
  EXPECT_THAT(outcome.err, HasSubstr("nbd-copy: destination " + destination->uri() + ": "));
  EXPECT_THAT(outcome.err, HasSubstr("(0 errors, 0 reconnects)"));
  EXPECT_THAT(outcome.err, HasSubstr("; read latency p50 "));
  EXPECT_THAT(outcome.err, HasSubstr("; write latency p50 "));
  // Without the flag, nothing of it.
  const Outcome quiet = RunCopy({source_->uri(), destination->uri()}, *dir_);
  ASSERT_EQ(quiet.exit_status, 0) << quiet.err;
  EXPECT_THAT(quiet.err, ::testing::Not(HasSubstr("latency")));
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

// A source that is killed once the copy is under way and started again on the same socket.
class ServerRestartTest : public NbdCopyTest {
 protected:
  void SetUp() override {
    NbdCopyTest::SetUp();
    ASSERT_TRUE(nbd::testing::WriteDiskImage(File("source.img"), 64 * kMiB, [](uint64_t offset) {
                  return static_cast<uint8_t>(offset * 29 + (offset >> 20));
                }).ok());
    // 256 reads of 256 KiB, 4 at a time, 40 ms each: about 2.6 s of copying.
    server_ = StartNbdkit({"--filter=delay", "file", File("source.img"), "rdelay=40ms"});
    ASSERT_NE(server_, nullptr);
  }

  // Starts nbd-copy with `extra` flags, waits until --progress says 5-90 % is done, then kills
  // the server and starts it again. Returns the copy's exit status.
  std::optional<int> CopyThroughARestart(const std::vector<std::string>& extra) {
    std::vector<std::string> arguments = {"--connections=1", "--requests=4",
                                          "--request-size=256k", "--progress=2"};
    arguments.insert(arguments.end(), extra.begin(), extra.end());
    arguments.push_back(server_->uri());
    arguments.push_back(File("copy.img"));
    const pid_t pid = StartCopy(arguments, File("copy.log"));
    if (pid < 0) return std::nullopt;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    bool under_way = false;
    while (!under_way && absl::Now() < deadline) {
      for (absl::string_view line : absl::StrSplit(ReadFile(File("copy.log")), '\n')) {
        int percent = 0;
        if (absl::ConsumeSuffix(&line, "/100") && absl::SimpleAtoi(line, &percent) &&
            percent >= 5 && percent <= 90) {
          under_way = true;
        }
      }
      if (!under_way) absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_TRUE(under_way) << ReadFile(File("copy.log"));
    server_->Kill(SIGKILL);
    EXPECT_TRUE(server_->Wait().ok());
    EXPECT_TRUE(server_->Restart().ok());
    return WaitForExit(pid, absl::Seconds(60));
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ServerRestartTest, RetriesEndWithAnIdenticalCopy) {
  const std::optional<int> status = CopyThroughARestart({"--retries=10"});
  ASSERT_EQ(status, 0) << ReadFile(File("copy.log"));
  EXPECT_TRUE(ReadFile(File("copy.img")) == ReadFile(File("source.img")))
      << "the copy differs from the source";
}

TEST_F(ServerRestartTest, WithoutRetriesTheCopyFailsSayingHowFarItGot) {
  const std::optional<int> status = CopyThroughARestart({});
  ASSERT_EQ(status, 1) << ReadFile(File("copy.log"));
  EXPECT_THAT(ReadFile(File("copy.log")),
              ::testing::ContainsRegex("the copy stopped after [0-9]+ of 67108864 bytes"));
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

TEST_F(NbdCopyTest, StreamEndingInsideADestinationBlockKeepsTheBytesAfterIt) {
  // The policy filter fails any request that is not whole 4 KiB blocks. The stream ends 1984
  // bytes into a block: nbd-copy must read that block and write it back whole, with the
  // destination's own bytes after the stream's end.
  std::unique_ptr<ServerProcess> server =
      StartNbdkit({"--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=4096",
                   "blocksize-error-policy=error"});
  ASSERT_NE(server, nullptr);
  const std::string before = RandomBytes(kMiB, 81);
  WriteFile(File("before.img"), before);
  Outcome outcome = RunCopy({File("before.img"), server->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;

  const std::string stream = RandomBytes(600000, 82);
  WriteFile(File("stream.img"), stream);
  outcome = RunShell(absl::StrCat("cat ", Quote(File("stream.img")), " | ", CopyPath(),
                                  " --request-size=64k - ", Quote(server->uri())),
                     *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  std::unique_ptr<nbdring::Client> client = Connect(*server);
  ASSERT_NE(client, nullptr);
  const std::string after = ReadExport(*client);
  ASSERT_EQ(after.size(), kMiB);
  EXPECT_TRUE(after.compare(0, stream.size(), stream) == 0) << "the stream was not copied";
  EXPECT_TRUE(after.compare(stream.size(), std::string::npos, before, stream.size(),
                            std::string::npos) == 0)
      << "the bytes after the stream's end were changed";
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


// --- qcow2 through qemu-nbd, checked against qemu-img -------------------------------------

TEST_F(NbdCopyTest, Qcow2SourceMatchesQemuImgConvertAndKeepsHoles) {
  const std::string image = File("source.qcow2");
  Outcome outcome = RunShell(absl::StrCat("qemu-img create -q -f qcow2 ", Quote(image), " 64M"),
                             *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  // Data, an explicit zero cluster run, more data, and data up to the very end.
  outcome = RunShell(absl::StrCat("qemu-io -f qcow2 -c 'write -P 0x5a 1M 3M' ",
                                  "-c 'write -z 20M 1M' -c 'write -P 0xa5 40M 512k' ",
                                  "-c 'write -P 0x3c 62M 2M' ", Quote(image), " >/dev/null"),
                     *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunShell(absl::StrCat("qemu-img convert -f qcow2 -O raw ", Quote(image), " ",
                                  Quote(File("reference.raw"))),
                     *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;

  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::StartQemuNbd(image, "qcow2");
  ASSERT_TRUE(server.ok()) << server.status();
  outcome = RunCopy({(*server)->uri(), File("copy.raw")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;

  const std::string copied = ReadFile(File("copy.raw"));
  ASSERT_EQ(copied.size(), 64 * kMiB);
  EXPECT_TRUE(copied == ReadFile(File("reference.raw"))) << "nbd-copy and qemu-img differ";
  EXPECT_EQ(Sha256(File("copy.raw")), Sha256(File("reference.raw")));
  EXPECT_EQ(copied[1 * kMiB], '\x5a');
  EXPECT_EQ(copied[64 * kMiB - 1], '\x3c');
  // 5.5 MiB of data; the zero cluster run and the unallocated clusters stay holes.
  EXPECT_LE(AllocatedBytes(File("copy.raw")), 8 * kMiB);
}

TEST_F(NbdCopyTest, RawFileToQcow2ExportMatchesQemuImgCompare) {
  const uint64_t size = 48 * kMiB;
  const std::vector<Piece> pieces = {{0, RandomBytes(kMiB, 21)},
                                     {5 * kMiB + 4096, RandomBytes(3 * kMiB, 22)},
                                     {size - kMiB, RandomBytes(kMiB, 23)}};
  WriteSparseImage(File("source.raw"), size, pieces);
  const std::string image = File("destination.qcow2");
  Outcome outcome = RunShell(absl::StrCat("qemu-img create -q -f qcow2 ", Quote(image), " 48M"),
                             *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  // Old data where the source has a hole: the copy must zero it, not skip it.
  outcome = RunShell(
      absl::StrCat("qemu-io -f qcow2 -c 'write -P 0xee 10M 4M' ", Quote(image), " >/dev/null"),
      *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::StartQemuNbd(image, "qcow2");
    ASSERT_TRUE(server.ok()) << server.status();
    outcome = RunCopy({"--flush", File("source.raw"), (*server)->uri()}, *dir_);
    ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  }  // qemu-nbd stops here and releases the image

  outcome = RunShell(absl::StrCat("qemu-img compare -f raw -F qcow2 ", Quote(File("source.raw")),
                                  " ", Quote(image), " >/dev/null"),
                     *dir_);
  EXPECT_EQ(outcome.exit_status, 0) << "qemu-img compare found a difference";
  outcome = RunShell(absl::StrCat("qemu-img convert -f qcow2 -O raw ", Quote(image), " ",
                                  Quote(File("back.raw"))),
                     *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_TRUE(ReadFile(File("back.raw")) == ReadFile(File("source.raw")));
  EXPECT_EQ(Sha256(File("back.raw")), Sha256(File("source.raw")));
}

// --- a server killed mid-copy -------------------------------------------------------------

// Starts nbd-copy SOURCE DESTINATION with a progress line, waits until the copy is running,
// kills `victim` with SIGKILL and returns how nbd-copy ended (exit status -1: it hung).
Outcome KillServerMidCopy(ServerProcess& victim, const std::string& source,
                          const std::string& destination, const TempDir& dir) {
  const std::string log = dir.File("background-copy.log");
  const pid_t pid = StartCopy({"--progress", source, destination}, log);
  Outcome outcome;
  if (pid < 0) return outcome;
  // The first progress line is printed once the copy runs; let requests flow a little more.
  EXPECT_TRUE(WaitForText(log, "/ 1.0 GiB", absl::Seconds(20))) << ReadFile(log);
  absl::SleepFor(absl::Milliseconds(300));
  victim.Kill(SIGKILL);
  EXPECT_TRUE(victim.Wait().ok());
  const absl::Time killed = absl::Now();
  const std::optional<int> exit_status = WaitForExit(pid, absl::Seconds(20));
  EXPECT_LT(absl::Now() - killed, absl::Seconds(5)) << "nbd-copy took too long to give up";
  outcome.exit_status = exit_status.value_or(-1);
  outcome.err = ReadFile(log);
  std::cerr << "nbd-copy " << source << " " << destination << " after SIGKILL:\n"
            << outcome.err << "\n";
  return outcome;
}

TEST_F(NbdCopyTest, SourceKilledMidCopyFailsNamingTheSource) {
  // Slow reads (one nbdkit thread: nbdkit 1.32's delay filter can trip an assertion when a
  // client goes away while several worker threads sleep) keep the copy going for minutes.
  std::unique_ptr<ServerProcess> source =
      StartNbdkit({"--threads=1", "--filter=delay", "pattern", "1G", "delay-read=20ms"});
  ASSERT_NE(source, nullptr);
  const Outcome outcome = KillServerMidCopy(*source, source->uri(), "null:", *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr(absl::StrCat("nbd-copy: reading source ", source->uri(),
                                                  " at offset ")));
  EXPECT_THAT(outcome.err, HasSubstr("failed: "));
}

TEST_F(NbdCopyTest, DestinationKilledMidCopyFailsNamingTheDestination) {
  std::unique_ptr<ServerProcess> source = StartNbdkit({"pattern", "1G"});
  std::unique_ptr<ServerProcess> destination =
      StartNbdkit({"--threads=1", "--filter=delay", "memory", "1G", "delay-write=20ms"});
  ASSERT_NE(source, nullptr);
  ASSERT_NE(destination, nullptr);
  const Outcome outcome =
      KillServerMidCopy(*destination, source->uri(), destination->uri(), *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr(absl::StrCat("nbd-copy: writing destination ",
                                                  destination->uri(), " at offset ")));
  EXPECT_THAT(outcome.err, HasSubstr("failed: "));
}

// --- sources mapped window by window -------------------------------------------------------

TEST_F(NbdCopyTest, ExportLargerThanOneMapWindowIsMappedAsTheCopyGoes) {
  // 3 GiB, mostly holes: data at the start, across the 1 GiB window boundary, at an odd
  // offset past 2 GiB and at the very end.
  const uint64_t size = 3 * kGiB;
  const std::vector<Piece> pieces = {{0, RandomBytes(64 * 1024, 31)},
                                     {kGiB - 300 * 1024, RandomBytes(500 * 1024, 32)},
                                     {2 * kGiB + 12345, RandomBytes(100 * 1024, 33)},
                                     {size - kMiB, RandomBytes(kMiB, 34)}};
  const std::string source_log = File("source.log");
  std::unique_ptr<ServerProcess> source = StartNbdkit(
      {"--filter=log", "memory", "3G", absl::StrCat("logfile=", source_log)});
  // Old data around the second window boundary and near the end, where the source is zero.
  std::unique_ptr<ServerProcess> destination = StartNbdkit({"memory", "3G"});
  ASSERT_NE(source, nullptr);
  ASSERT_NE(destination, nullptr);
  {
    std::unique_ptr<nbdring::Client> writer = Connect(*source);
    ASSERT_NE(writer, nullptr);
    for (const Piece& piece : pieces) {
      ASSERT_TRUE(writer->PwriteSync(piece.bytes.data(), piece.bytes.size(), piece.offset).ok());
    }
    ASSERT_TRUE(writer->Close().ok());
    writer = Connect(*destination);
    ASSERT_NE(writer, nullptr);
    const std::string dirt(2 * kMiB, '\xAA');
    for (uint64_t offset : {2 * kGiB - kMiB, size - 3 * kMiB}) {
      ASSERT_TRUE(writer->PwriteSync(dirt.data(), dirt.size(), offset).ok());
    }
    ASSERT_TRUE(writer->Close().ok());
  }

  // One connection: the log then shows requests in the order nbd-copy sent them.
  Outcome outcome = RunCopy({"--connections=1", source->uri(), destination->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;

  const std::vector<std::string> extents = LoggedRequests(source_log, "Extents");
  ASSERT_GE(extents.size(), 3u) << "3 GiB must take at least three 1 GiB windows";
  for (const std::string& line : extents) {
    EXPECT_LE(LoggedField(line, "count"), kGiB) << line;
  }
  EXPECT_EQ(LoggedField(extents[0], "offset"), 0u);
  // Lazy: the first read went out before the source was mapped past the first window.
  const std::string log = ReadFile(source_log);
  const size_t first_read = log.find(" Read id=");
  ASSERT_NE(first_read, std::string::npos);
  EXPECT_LT(first_read, log.find(extents[1])) << log;

  // libnbd's nbdcopy, an independent reader, brings the destination back as a sparse file.
  outcome = RunShell(
      absl::StrCat("nbdcopy ", Quote(destination->uri()), " ", Quote(File("check.img"))), *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  ExpectSparseImage(File("check.img"), size, pieces, 16 * kMiB);
}

TEST_F(NbdCopyTest, FileLargerThanOneMapWindowKeepsDataAcrossWindowBoundaries) {
  const uint64_t size = 3 * kGiB;
  const std::vector<Piece> pieces = {{kGiB - 4096, RandomBytes(8192, 41)},
                                     {2 * kGiB - kMiB, RandomBytes(2 * kMiB, 42)},
                                     {size - 4096, RandomBytes(4096, 43)}};
  WriteSparseImage(File("source.img"), size, pieces);
  const Outcome outcome = RunCopy({File("source.img"), File("copy.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  ExpectSparseImage(File("copy.img"), size, pieces, 8 * kMiB);
}

// --- a source with odd extents, described one extent per reply --------------------------

// An 8 MiB image of random bytes with zero runs at odd offsets, served by nbdkit's eval plugin
// whose block status answers every query with just the one extent the offset lies in (fewer
// than asked, as the NBD spec allows), ending where the run ends.
class OddExtentSourceTest : public NbdCopyTest {
 protected:
  static constexpr uint64_t kSize = 8 * kMiB;

  void SetUp() override {
    NbdCopyTest::SetUp();
    // Run boundaries: data, zero, data, zero, ... The second zero run fits inside one 4 KiB
    // block; the last one ends at the end of the image.
    boundaries_ = {0,           kMiB + 512,       3 * kMiB + 1536, 4 * kMiB + 100,
                   4 * kMiB + 3000, 5 * kMiB - 7, 7 * kMiB + 77,   kSize - 3 * 4096 - 5,
                   kSize};
    image_ = RandomBytes(kSize, 51);
    for (size_t i = 1; i + 1 < boundaries_.size(); i += 2) {
      image_.replace(boundaries_[i], boundaries_[i + 1] - boundaries_[i],
                     boundaries_[i + 1] - boundaries_[i], '\0');
    }
    WriteFile(File("image.bin"), image_);
    source_log_ = File("source.log");
    const std::string extents_script = absl::StrCat(
        "awk -v o=$4 -v c=$3 'BEGIN { n = split(\"", absl::StrJoin(boundaries_, " "),
        "\", b, \" \"); for (i = 1; i < n; i++) if (o >= b[i] && o < b[i + 1]) { e = b[i + 1]; "
        "if (e > o + c) e = o + c; print o, e - o, (i % 2 == 0) ? \"zero\" : \"\"; exit } }'");
    source_ = StartNbdkit(
        {"--filter=log", "eval", absl::StrCat("get_size=echo ", kSize),
         absl::StrCat("pread=dd if=", File("image.bin"),
                      " iflag=skip_bytes,count_bytes skip=$4 count=$3 status=none"),
         "can_extents=exit 0", absl::StrCat("extents=", extents_script),
         absl::StrCat("logfile=", source_log_)});
    ASSERT_NE(source_, nullptr);
  }

  // A memory export of kSize bytes, every byte 0xAA, behind `filters` configured by
  // `parameters`.
  std::unique_ptr<ServerProcess> StartDirtyDestination(
      const std::vector<std::string>& filters, const std::vector<std::string>& parameters) {
    std::vector<std::string> arguments = filters;
    arguments.insert(arguments.end(), {"memory", absl::StrCat(kSize)});
    arguments.insert(arguments.end(), parameters.begin(), parameters.end());
    std::unique_ptr<ServerProcess> destination = StartNbdkit(arguments);
    if (destination == nullptr) return nullptr;
    std::unique_ptr<nbdring::Client> client = Connect(*destination);
    if (client == nullptr) return nullptr;
    const std::string dirt(kSize, '\xAA');
    EXPECT_TRUE(client->PwriteSync(dirt.data(), dirt.size(), 0).ok());
    EXPECT_TRUE(client->Close().ok());
    return destination;
  }

  std::vector<uint64_t> boundaries_;
  std::string image_;
  std::string source_log_;
  std::unique_ptr<ServerProcess> source_;
};

TEST_F(OddExtentSourceTest, ShortExtentRepliesAreFollowedToTheEnd) {
  const Outcome outcome = RunCopy({source_->uri(), File("copy.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_TRUE(ReadFile(File("copy.img")) == image_);
  // One query per run: each reply described a single extent and the next query went on
  // from where it ended.
  const std::vector<std::string> extents = LoggedRequests(source_log_, "Extents");
  ASSERT_EQ(extents.size(), boundaries_.size() - 1);
  for (size_t i = 0; i < extents.size(); ++i) {
    EXPECT_EQ(LoggedField(extents[i], "offset"), boundaries_[i]) << extents[i];
  }
  // The zero runs of a sparse source stay holes (the file system works in 4 KiB blocks).
  EXPECT_LT(AllocatedBytes(File("copy.img")), kSize - 3 * kMiB);
}

TEST_F(OddExtentSourceTest, DestinationMinimumBlockSizeAlignsEveryRequest) {
  // The policy filter advertises a 4 KiB minimum block size and fails any request that
  // ignores it; the log filter shows what reached the export.
  const std::string destination_log = File("destination.log");
  std::unique_ptr<ServerProcess> destination = StartDirtyDestination(
      {"--filter=blocksize-policy", "--filter=log"},
      {"blocksize-minimum=4096", "blocksize-error-policy=error",
       absl::StrCat("logfile=", destination_log)});
  ASSERT_NE(destination, nullptr);
  {
    std::unique_ptr<nbdring::Client> probe = Connect(*destination);
    ASSERT_NE(probe, nullptr);
    ASSERT_EQ(probe->export_info().block_size.minimum, 4096u);
  }
  const Outcome outcome =
      RunCopy({"--request-size=100k", source_->uri(), destination->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  std::unique_ptr<nbdring::Client> client = Connect(*destination);
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(ReadExport(*client) == image_) << "the dirty destination was not fully rewritten";

  const std::vector<std::string> writes = LoggedRequests(destination_log, "Write");
  const std::vector<std::string> zeroes = LoggedRequests(destination_log, "Zero");
  EXPECT_FALSE(zeroes.empty()) << "the aligned middles of the zero runs must be zeroed";
  uint64_t written = 0;
  for (const std::vector<std::string>* lines : {&writes, &zeroes}) {
    for (const std::string& line : *lines) {
      if (absl::StrContains(line, "connection=1 ")) continue;  // the fixture's own dirt
      EXPECT_EQ(LoggedField(line, "offset") % 4096, 0u) << line;
      EXPECT_EQ(LoggedField(line, "count") % 4096, 0u) << line;
      // --request-size=100k is rounded down to whole 4 KiB blocks.
      if (lines == &writes) {
        EXPECT_LE(LoggedField(line, "count"), 25 * 4096u) << line;
      }
      written += LoggedField(line, "count");
    }
  }
  EXPECT_EQ(written, kSize);
}

TEST_F(NbdCopyTest, SourceMinimumBlockSizeAlignsReadsAndZeroRanges) {
  // A 64 KiB minimum on the source, whose extents (a sparse file's, through nbdkit's file
  // plugin) are only 4 KiB aligned: every read must be widened to whole 64 KiB blocks.
  const std::vector<Piece> pieces = {{3 * kMiB + 4096, RandomBytes(4096, 61)},
                                     {5 * kMiB + 65536 * 3, RandomBytes(65536 + 4096, 62)}};
  WriteSparseImage(File("source.img"), 8 * kMiB, pieces);
  const std::string source_log = File("source.log");
  std::unique_ptr<ServerProcess> source = StartNbdkit(
      {"--filter=blocksize-policy", "--filter=log", "file", File("source.img"),
       "blocksize-minimum=64K", "blocksize-preferred=64K", "blocksize-error-policy=error",
       absl::StrCat("logfile=", source_log)});
  ASSERT_NE(source, nullptr);
  {
    std::unique_ptr<nbdring::Client> probe = Connect(*source);
    ASSERT_NE(probe, nullptr);
    ASSERT_EQ(probe->export_info().block_size.minimum, 65536u);
  }
  const Outcome outcome = RunCopy({"--request-size=100k", source->uri(), File("copy.img")},
                                  *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  // Three 64 KiB blocks hold data: everything else stays a hole.
  ExpectSparseImage(File("copy.img"), 8 * kMiB, pieces, 4 * 65536);
  std::vector<uint64_t> read_offsets;
  for (const std::string& line : LoggedRequests(source_log, "Read")) {
    EXPECT_EQ(LoggedField(line, "count"), 65536u) << line;  // 100k, rounded down
    read_offsets.push_back(LoggedField(line, "offset"));
  }
  std::sort(read_offsets.begin(), read_offsets.end());  // connections answer in any order
  EXPECT_THAT(read_offsets, ::testing::ElementsAre(3 * kMiB, 5 * kMiB + 65536 * 3,
                                                   5 * kMiB + 65536 * 4));
}

TEST_F(NbdCopyTest, SourceSizeNotAMultipleOfTheDestinationBlockSizeIsRefused) {
  WriteFile(File("source.img"), RandomBytes(1000000, 71));
  std::unique_ptr<ServerProcess> destination =
      StartNbdkit({"--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=4096",
                   "blocksize-error-policy=error"});
  ASSERT_NE(destination, nullptr);
  const Outcome outcome = RunCopy({File("source.img"), destination->uri()}, *dir_);
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err,
              HasSubstr(absl::StrCat("source ", File("source.img"),
                                     " has 1000000 bytes, which is not a multiple of the "
                                     "4096-byte minimum block size of destination ",
                                     destination->uri(), ": the last 576 bytes cannot be "
                                     "copied with aligned requests; nothing was written")));
  std::unique_ptr<nbdring::Client> client = Connect(*destination);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(ReadExport(*client).find_first_not_of('\0'), std::string::npos);
}

}  // namespace
