// nbd-copy against libnbd's nbdcopy (1.14) flag by flag: the real binaries on nbdkit servers
// whose log filter records every command the server receives, so each test sees what a flag
// really did on the wire: -S turns zero blocks read into NBD_CMD_WRITE_ZEROES (the same
// commands nbdcopy sends), --allocated writes zeroes without holes, --destination-is-zero
// (--target-is-zero) never zeroes, --flush flushes, --progress=FD writes nbdcopy's "N/100"
// lines, and nbdcopy's short options and exit statuses work.
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
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
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

using ::nbdcopy::testing::kMiB;

using ::nbdcopy::testing::CopyPath;
using ::nbdcopy::testing::Outcome;
using ::nbdcopy::testing::Quote;
using ::nbdcopy::testing::RunShellCapturingStderr;
using ::nbdcopy::testing::ReadFile;

// Runs `program` (nbd-copy or nbdcopy) with `arguments`, each quoted, stdin from /dev/null
// and `shell_suffix` (e.g. a "3>file" redirection) appended; stderr is captured.
Outcome Run(const std::string& program, const std::vector<std::string>& arguments,
            const TempDir& dir, const std::string& shell_suffix = "") {
  std::string command = program;
  for (const std::string& argument : arguments) absl::StrAppend(&command, " ", Quote(argument));
  absl::StrAppend(&command, " </dev/null ", shell_suffix);
  return RunShellCapturingStderr(command, dir.File("stderr"));
}

Outcome RunOurs(const std::vector<std::string>& arguments, const TempDir& dir,
                const std::string& shell_suffix = "") {
  return Run(CopyPath(), arguments, dir, shell_suffix);
}

Outcome RunNbdcopy(const std::vector<std::string>& arguments, const TempDir& dir,
                   const std::string& shell_suffix = "") {
  return Run("nbdcopy", arguments, dir, shell_suffix);
}

std::unique_ptr<ServerProcess> StartNbdkit(const std::vector<std::string>& args) {
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::StartNbdkit(args);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// A hexadecimal field ("offset=0x1000") of a logged request, or UINT64_MAX.
uint64_t LoggedField(absl::string_view line, absl::string_view field) {
  const size_t start = line.find(absl::StrCat(" ", field, "=0x"));
  if (start == absl::string_view::npos) return UINT64_MAX;
  absl::string_view value = line.substr(start + field.size() + 4);
  value = value.substr(0, value.find(' '));
  uint64_t number = 0;
  return absl::SimpleHexAtoi(value, &number) ? number : UINT64_MAX;
}

// A request the log filter recorded: "Write 0x0+0x1000", "Zero 0x1000+0xf000 trim=1".
struct LoggedCommand {
  std::string action;
  uint64_t offset = 0;
  uint64_t count = 0;
  bool trim = false;  // Zero only: the client allowed a hole (no NBD_CMD_FLAG_NO_HOLE)

  bool operator<(const LoggedCommand& other) const {
    return std::tie(offset, action, count, trim) <
           std::tie(other.offset, other.action, other.count, other.trim);
  }
  bool operator==(const LoggedCommand& other) const = default;
  friend std::ostream& operator<<(std::ostream& out, const LoggedCommand& command) {
    return out << command.action << " " << command.offset << "+" << command.count
               << (command.trim ? " trim" : "");
  }
};

// The Write, Zero, Trim and Flush requests of an nbdkit log, sorted by offset (requests in
// flight complete in any order).
std::vector<LoggedCommand> LoggedWrites(const std::string& log_path) {
  std::vector<LoggedCommand> commands;
  for (absl::string_view line : absl::StrSplit(ReadFile(log_path), '\n')) {
    for (const char* action : {"Write", "Zero", "Trim", "Flush"}) {
      if (!absl::StrContains(line, absl::StrCat(" ", action, " id="))) continue;
      LoggedCommand command{action, LoggedField(line, "offset"), LoggedField(line, "count")};
      command.trim = absl::StrContains(line, " trim=1");
      commands.push_back(command);
    }
  }
  std::sort(commands.begin(), commands.end());
  return commands;
}

uint64_t CountOf(const std::vector<LoggedCommand>& commands, const std::string& action) {
  return std::count_if(commands.begin(), commands.end(),
                       [&](const LoggedCommand& c) { return c.action == action; });
}

// Bytes the Write and Zero commands cover between them.
uint64_t BytesCovered(const std::vector<LoggedCommand>& commands) {
  uint64_t bytes = 0;
  for (const LoggedCommand& command : commands) {
    if (command.action == "Write" || command.action == "Zero") bytes += command.count;
  }
  return bytes;
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat status;
  if (stat(path.c_str(), &status) != 0) return UINT64_MAX;
  return static_cast<uint64_t>(status.st_blocks) * 512;
}

// 1 MiB of data at 0, 64 KiB and 128 KiB (4 KiB each, the rest zero). The noextents filter
// hides where the zeroes are, so only reading the bytes (-S) finds them.
const std::vector<std::string> kDataWithZeroBlocks = {
    "--filter=noextents", "data", "1 @65536 2 @131072 3 @1048575 4", "size=1M"};

class ParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<TempDir>> dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *std::move(dir);
  }
  std::string File(const std::string& name) const { return dir_->File(name); }

  // A memory export of `size` whose log filter writes to File(`log_name`).
  std::unique_ptr<ServerProcess> StartLoggedMemory(const std::string& size,
                                                   const std::string& log_name) {
    return StartNbdkit({"--filter=log", "memory", size, absl::StrCat("logfile=", File(log_name))});
  }

  std::unique_ptr<TempDir> dir_;
};

TEST_F(ParityTest, ZeroBlocksInDataBecomeTheSameZeroCommandsAsNbdcopySends) {
  std::unique_ptr<ServerProcess> source = StartNbdkit(kDataWithZeroBlocks);
  std::unique_ptr<ServerProcess> ours = StartLoggedMemory("1M", "ours.log");
  std::unique_ptr<ServerProcess> theirs = StartLoggedMemory("1M", "theirs.log");
  ASSERT_TRUE(source && ours && theirs);
  Outcome outcome = RunOurs({source->uri(), ours->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunNbdcopy({source->uri(), theirs->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;

  const std::vector<LoggedCommand> our_commands = LoggedWrites(File("ours.log"));
  EXPECT_THAT(our_commands, ElementsAreArray(LoggedWrites(File("theirs.log"))));
  // Only the four 4 KiB blocks holding data travel as data; the rest is zeroed, holes allowed.
  EXPECT_EQ(CountOf(our_commands, "Write"), 4u);
  EXPECT_GT(CountOf(our_commands, "Zero"), 0u);
  for (const LoggedCommand& command : our_commands) {
    if (command.action == "Write") {
      EXPECT_EQ(command.count, 4096u) << command;
    }
    if (command.action == "Zero") {
      EXPECT_TRUE(command.trim) << command;
    }
  }
  EXPECT_EQ(BytesCovered(our_commands), kMiB);
}

TEST_F(ParityTest, SparseZeroWritesEveryBlockAsData) {
  std::unique_ptr<ServerProcess> source = StartNbdkit(kDataWithZeroBlocks);
  std::unique_ptr<ServerProcess> destination = StartLoggedMemory("1M", "copy.log");
  ASSERT_TRUE(source && destination);
  const Outcome outcome = RunOurs({"-S", "0", source->uri(), destination->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const std::vector<LoggedCommand> commands = LoggedWrites(File("copy.log"));
  EXPECT_EQ(CountOf(commands, "Zero"), 0u);
  EXPECT_EQ(BytesCovered(commands), kMiB);
}

TEST_F(ParityTest, ZeroBlocksBecomeHolesInAFileLikeNbdcopyMakes) {
  std::unique_ptr<ServerProcess> source = StartNbdkit(kDataWithZeroBlocks);
  ASSERT_NE(source, nullptr);
  Outcome outcome = RunOurs({"--sparse=4k", source->uri(), File("ours.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunNbdcopy({source->uri(), File("theirs.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_TRUE(ReadFile(File("ours.img")) == ReadFile(File("theirs.img")));
  // Four 4 KiB blocks of data; a file system may round each up a little.
  EXPECT_LE(AllocatedBytes(File("ours.img")), 256 * 1024u);
  EXPECT_LE(AllocatedBytes(File("ours.img")), AllocatedBytes(File("theirs.img")) + 64 * 1024);
}

// A 4 MiB source with data at 0 and 2 MiB and holes (reported by extents) elsewhere.
const std::vector<std::string> kSparseSource = {"data", "1 @2097152 2", "size=4M"};

TEST_F(ParityTest, AllocatedZeroesHolesWithoutPunchingThem) {
  std::unique_ptr<ServerProcess> source = StartNbdkit(kSparseSource);
  std::unique_ptr<ServerProcess> allocated = StartLoggedMemory("4M", "allocated.log");
  std::unique_ptr<ServerProcess> sparse = StartLoggedMemory("4M", "sparse.log");
  ASSERT_TRUE(source && allocated && sparse);
  Outcome outcome = RunOurs({"--allocated", source->uri(), allocated->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunOurs({source->uri(), sparse->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;

  // --allocated: every byte written or zeroed, and no zero request allows a hole, as
  // nbdcopy --allocated sends them (trim=0).
  const std::vector<LoggedCommand> with_allocated = LoggedWrites(File("allocated.log"));
  EXPECT_EQ(BytesCovered(with_allocated), 4 * kMiB);
  EXPECT_GT(CountOf(with_allocated, "Zero"), 0u);
  for (const LoggedCommand& command : with_allocated) EXPECT_FALSE(command.trim) << command;
  // Without it the same zero requests allow holes.
  const std::vector<LoggedCommand> without = LoggedWrites(File("sparse.log"));
  EXPECT_GT(CountOf(without, "Zero"), 0u);
  for (const LoggedCommand& command : without) {
    if (command.action == "Zero") {
      EXPECT_TRUE(command.trim) << command;
    }
  }
}

TEST_F(ParityTest, AllocatedFileHasNoHolesAndTheSameBytesAsNbdcopys) {
  std::unique_ptr<ServerProcess> source = StartNbdkit(kSparseSource);
  ASSERT_NE(source, nullptr);
  Outcome outcome = RunOurs({"--allocated", source->uri(), File("ours.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunNbdcopy({"--allocated", source->uri(), File("theirs.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_TRUE(ReadFile(File("ours.img")) == ReadFile(File("theirs.img")));
  EXPECT_GE(AllocatedBytes(File("ours.img")), 4 * kMiB);
  // And without --allocated the holes stay holes.
  outcome = RunOurs({source->uri(), File("sparse.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_LT(AllocatedBytes(File("sparse.img")), kMiB);
}

TEST_F(ParityTest, TargetIsZeroNeverZeroes) {
  std::unique_ptr<ServerProcess> source = StartNbdkit(kDataWithZeroBlocks);
  std::unique_ptr<ServerProcess> destination = StartLoggedMemory("1M", "copy.log");
  ASSERT_TRUE(source && destination);
  for (const char* spelling : {"--target-is-zero", "--destination-is-zero"}) {
    const Outcome outcome = RunOurs({spelling, source->uri(), destination->uri()}, *dir_);
    ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  }
  const std::vector<LoggedCommand> commands = LoggedWrites(File("copy.log"));
  EXPECT_EQ(CountOf(commands, "Zero"), 0u);
  EXPECT_EQ(CountOf(commands, "Trim"), 0u);
  EXPECT_EQ(CountOf(commands, "Write"), 8u);  // the four data blocks, twice
}

TEST_F(ParityTest, FlushSendsOneFlushAtTheEndAndOnlyWhenAsked) {
  std::unique_ptr<ServerProcess> source = StartNbdkit(kSparseSource);
  std::unique_ptr<ServerProcess> flushed = StartLoggedMemory("4M", "flushed.log");
  std::unique_ptr<ServerProcess> unflushed = StartLoggedMemory("4M", "unflushed.log");
  ASSERT_TRUE(source && flushed && unflushed);
  Outcome outcome = RunOurs({"--flush", source->uri(), flushed->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  outcome = RunOurs({source->uri(), unflushed->uri()}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_EQ(CountOf(LoggedWrites(File("flushed.log")), "Flush"), 1u);
  EXPECT_EQ(CountOf(LoggedWrites(File("unflushed.log")), "Flush"), 0u);
  // The flush follows every write in the log (the log is in arrival order).
  const std::string log = ReadFile(File("flushed.log"));
  EXPECT_GT(log.find(" Flush id="), log.rfind(" Write id="));
}

// The lines a --progress=FD run wrote, checked against nbdcopy's format: "N/100", N whole and
// never decreasing, starting at 0 and ending at 100.
void ExpectMachineProgress(const std::string& text) {
  ASSERT_FALSE(text.empty());
  ASSERT_EQ(text.back(), '\n');
  std::vector<std::string> lines = absl::StrSplit(text.substr(0, text.size() - 1), '\n');
  int previous = -1;
  for (const std::string& line : lines) {
    int percent = -1;
    ASSERT_TRUE(absl::EndsWith(line, "/100") &&
                absl::SimpleAtoi(line.substr(0, line.size() - 4), &percent))
        << "not N/100: \"" << line << "\"";
    EXPECT_GE(percent, previous) << text;
    EXPECT_LE(percent, 100);
    previous = percent;
  }
  EXPECT_EQ(lines.front(), "0/100");
  EXPECT_EQ(lines.back(), "100/100");
}

TEST_F(ParityTest, ProgressFdWritesNbdcopysLines) {
  std::unique_ptr<ServerProcess> source = StartNbdkit({"pattern", "64M"});
  ASSERT_NE(source, nullptr);
  Outcome outcome = RunNbdcopy({"--progress=3", source->uri(), "null:"}, *dir_,
                               absl::StrCat("3>", File("theirs.progress")));
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  ExpectMachineProgress(ReadFile(File("theirs.progress")));  // the format, as nbdcopy has it
  outcome = RunOurs({"--progress=3", source->uri(), File("copy.img")}, *dir_,
                    absl::StrCat("3>", File("ours.progress")));
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  ExpectMachineProgress(ReadFile(File("ours.progress")));
  EXPECT_THAT(outcome.err, IsEmpty()) << "--progress=FD must not draw the live line";
}

TEST_F(ParityTest, ProgressFdEndsWithoutHundredWhenTheCopyFails) {
  std::unique_ptr<ServerProcess> source =
      StartNbdkit({"--filter=error", "pattern", "8M", "error-pread-rate=100%"});
  ASSERT_NE(source, nullptr);
  const Outcome outcome = RunOurs({"--progress=3", source->uri(), "null:"}, *dir_,
                                  absl::StrCat("3>", File("progress")));
  EXPECT_EQ(outcome.exit_status, 1);
  EXPECT_THAT(outcome.err, HasSubstr("reading source"));
  EXPECT_THAT(ReadFile(File("progress")), Not(HasSubstr("100/100")));
}

TEST_F(ParityTest, ShortOptionsAndQueueSizeAsNbdcopySpellsThem) {
  std::unique_ptr<ServerProcess> source = StartNbdkit({"pattern", "8M"});
  ASSERT_NE(source, nullptr);
  // --queue-size=512k of 256 KiB requests leaves 2 of the 16 requested per connection.
  Outcome outcome = RunOurs({"-C", "1", "-R16", "-T", "0", "-S", "8k", "--queue-size=512k",
                             "--request-size=256k", "-v", source->uri(), File("ours.img")},
                            *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_THAT(outcome.err, HasSubstr("2 request(s) of 262144 bytes in flight"));
  EXPECT_THAT(outcome.err, HasSubstr("sparse blocks 8192 bytes"));
  outcome = RunOurs({"--synchronous", "-v", source->uri(), File("sync.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_THAT(outcome.err, HasSubstr("1 request(s) of"));
  outcome = RunNbdcopy({"-C", "1", "-R", "16", source->uri(), File("theirs.img")}, *dir_);
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const std::string theirs = ReadFile(File("theirs.img"));
  ASSERT_EQ(theirs.size(), 8 * kMiB);
  EXPECT_TRUE(ReadFile(File("ours.img")) == theirs);
  EXPECT_TRUE(ReadFile(File("sync.img")) == theirs);
}

TEST_F(ParityTest, BadValuesAreNamedAndExitTwo) {
  struct Case {
    std::vector<std::string> arguments;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"-C"}, "option -C (--connections) needs a value"},
      {{"--progress=x", "a", "b"}, "--progress=FD needs a file descriptor number, got \"x\""},
      {{"--progress=97", "a", "b"}, "--progress=97: not an open file descriptor"},
      {{"-S", "3q", "a", "b"}, "\"3q\" has an unknown unit \"q\""},
      {{"--request-size=64m", "a", "b"}, "--request-size=64m: must be between 1 and 33554432"},
      {{"--queue-size=0", "a", "b"}, "--queue-size=0: must be between 1 and"},
      {{"-T", "-1", "a", "b"}, "--threads and --timeout not negative"},
  };
  for (const Case& test_case : cases) {
    const Outcome outcome = RunOurs(test_case.arguments, *dir_);
    EXPECT_EQ(outcome.exit_status, 2) << test_case.message;
    EXPECT_THAT(outcome.err, HasSubstr(test_case.message));
  }
  const Outcome version = RunOurs({"-V"}, *dir_);
  EXPECT_EQ(version.exit_status, 0);
}

}  // namespace
