// Bad input to every tool, one table: a missing URI, an unreachable server, a malformed URI,
// a source that cannot be opened, a destination too small or read-only, a dirty bitmap the
// server does not offer. Each run must exit with the documented status (2 for a command line
// that cannot be used, 1 for everything else), print exactly one line on stderr that names
// what was wrong (checked by a stable substring: the URI, path, flag or bitmap name, never
// the wording), and leave a file destination as it was (and a missing one missing).
#include <sys/stat.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/copy/copy_test_support.h"
#include "tests/testing/server_process.h"

namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::nbdcopy::testing::Outcome;
using ::nbdcopy::testing::Quote;
using ::nbdcopy::testing::ReadFile;
using ::nbdcopy::testing::RunShellCapturingStderr;
using ::nbdcopy::testing::ToolPath;
using ::testing::HasSubstr;

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct BadInput {
  std::string name;  // what is wrong, for the failure message
  std::string tool;  // "nbd-copy", "nbd-info" or "nbd-bench"
  std::vector<std::string> arguments;
  int exit_status;
  std::string named;  // stderr must contain this
};

int NonEmptyLines(const std::string& text) {
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) lines += line.empty() ? 0 : 1;
  return lines;
}

bool Exists(const std::string& path) {
  struct stat status;
  return stat(path.c_str(), &status) == 0;
}

TEST(BadInputTest, EveryToolNamesWhatIsWrongOnOneLineAndWritesNothing) {
  auto dir_or = TempDir::Create();
  ASSERT_TRUE(dir_or.ok()) << dir_or.status();
  const std::unique_ptr<TempDir> dir = *std::move(dir_or);
  auto small_or = ServerProcess::StartNbdkit({"memory", "1M"});
  ASSERT_TRUE(small_or.ok()) << small_or.status();
  const std::unique_ptr<ServerProcess> small = *std::move(small_or);
  auto read_only_or = ServerProcess::StartNbdkit({"-r", "memory", "16M"});
  ASSERT_TRUE(read_only_or.ok()) << read_only_or.status();
  const std::unique_ptr<ServerProcess> read_only = *std::move(read_only_or);

  const std::string source = dir->File("source.raw");  // 2 MiB: more than `small` holds
  ASSERT_EQ(RunShellCapturingStderr(
                absl::StrCat("head -c 2097152 /dev/urandom >", Quote(source)),
                dir->File("setup.stderr")).exit_status, 0);
  const std::string destination = dir->File("destination.raw");
  const std::string absent = dir->File("absent.raw");  // must never be created
  const std::string missing_socket = dir->File("nobody.sock");
  const std::string unreachable = absl::StrCat("nbd+unix:///?socket=", missing_socket);
  const std::string missing_file = dir->File("missing.img");

  const std::vector<BadInput> cases = {
      {"no arguments", "nbd-copy", {}, kExitUsage, "SOURCE"},
      {"no destination", "nbd-copy", {source}, kExitUsage, "DESTINATION"},
      {"bad flag value", "nbd-copy", {"--request-size=lots", source, absent}, kExitUsage,
       "--request-size"},
      {"unreachable Unix socket", "nbd-copy", {unreachable, absent}, kExitFailure,
       missing_socket},
      {"refused TCP port", "nbd-copy", {"nbd://127.0.0.1:1/", absent}, kExitFailure,
       "127.0.0.1:1"},
      {"malformed URI", "nbd-copy", {"nbd://[::1", absent}, kExitFailure, "nbd://[::1"},
      {"URI without socket", "nbd-copy", {"nbd+unix:///", absent}, kExitFailure, "socket"},
      {"mistyped scheme", "nbd-copy", {"nbdx://host/", absent}, kExitFailure, "nbdx://host/"},
      {"source file missing", "nbd-copy", {missing_file, absent}, kExitFailure, missing_file},
      {"destination directory missing", "nbd-copy", {source, dir->File("no/such/dir.raw")},
       kExitFailure, "no/such/dir.raw"},
      {"destination smaller than source", "nbd-copy", {source, small->uri()}, kExitFailure,
       small->uri()},
      {"read-only destination", "nbd-copy", {source, read_only->uri()}, kExitFailure,
       read_only->uri()},
      {"bitmap not offered", "nbd-copy", {"--dirty-bitmap=nosuch", small->uri(), destination},
       kExitFailure, "nosuch"},
      {"bitmap on a file source", "nbd-copy", {"--dirty-bitmap=b0", source, destination},
       kExitFailure, "--dirty-bitmap"},
      {"bitmap onto a pipe", "nbd-copy", {"--dirty-bitmap=b0", small->uri(), "-"}, kExitUsage,
       "--dirty-bitmap"},
      {"no URI", "nbd-info", {}, kExitUsage, "URI"},
      {"unreachable Unix socket", "nbd-info", {unreachable}, kExitFailure, missing_socket},
      {"malformed URI", "nbd-info", {"nbd://[::1"}, kExitFailure, "nbd://[::1"},
      {"bitmap not offered", "nbd-info", {"--map=qemu:dirty-bitmap:nosuch", small->uri()},
       kExitFailure, "nosuch"},
      {"unreachable Unix socket", "nbd-bench", {unreachable, "--runtime=1s"}, kExitFailure,
       missing_socket},
      {"malformed URI", "nbd-bench", {"nbd://[::1", "--runtime=1s"}, kExitFailure,
       "nbd://[::1"},
      {"writes to a read-only export", "nbd-bench",
       {read_only->uri(), "--rw=randwrite", "--runtime=1s"}, kExitFailure, "read-only"},
  };

  const std::string previous_copy = "the previous copy, which a failed run must not touch\n";
  for (const BadInput& bad : cases) {
    SCOPED_TRACE(absl::StrCat(bad.tool, ": ", bad.name));
    {
      FILE* out = std::fopen(destination.c_str(), "wb");
      ASSERT_NE(out, nullptr);
      std::fputs(previous_copy.c_str(), out);
      std::fclose(out);
    }
    std::string command = ToolPath(bad.tool);
    for (const std::string& argument : bad.arguments) {
      absl::StrAppend(&command, " ", Quote(argument));
    }
    const Outcome outcome = RunShellCapturingStderr(
        absl::StrCat(command, " </dev/null >/dev/null"), dir->File("tool.stderr"));
    EXPECT_EQ(outcome.exit_status, bad.exit_status);
    EXPECT_THAT(outcome.err, HasSubstr(bad.named));
    EXPECT_EQ(NonEmptyLines(outcome.err), 1) << outcome.err;
    EXPECT_EQ(ReadFile(destination), previous_copy) << "a failed run changed the destination";
    EXPECT_FALSE(Exists(absent)) << "a failed run created its destination";
  }
}

}  // namespace
