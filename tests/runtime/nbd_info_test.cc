// The nbd-info tool (//tools:nbd-info) run as a program against real servers: its text and
// JSON output, --list, --meta-context, and its one-line errors and exit codes.
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/runtime/test_support.h"
#include "tests/testing/server_process.h"

namespace nbdring::testing {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string NbdInfoPath() {
  const char* runfiles = std::getenv("TEST_SRCDIR");
  return absl::StrCat(runfiles == nullptr ? "." : runfiles, "/nbdring/tools/nbd-info");
}

absl::StatusOr<CommandResult> NbdInfo(std::vector<std::string> arguments) {
  arguments.insert(arguments.begin(), NbdInfoPath());
  return RunAndCapture(arguments);
}

std::vector<std::string> NamedExportsArguments() {
  return {"--filter=exportname",    "memory",          "64M",
          "exportname=alpha",       "exportname=beta", "exportname-list=explicit",
          "exportname-strict=true", "exportdesc=fixed:Test disk"};
}

// An error is exactly one line on stderr, starting with the program's name, and nothing on
// stdout.
void ExpectOneLineError(const CommandResult& result, int exit_code, const std::string& phrase) {
  EXPECT_EQ(result.exit_code, exit_code) << result.standard_error;
  EXPECT_EQ(result.standard_output, "");
  EXPECT_THAT(result.standard_error, StartsWith("nbd-info: "));
  EXPECT_THAT(result.standard_error, HasSubstr(phrase));
  ASSERT_FALSE(result.standard_error.empty());
  EXPECT_EQ(result.standard_error.find('\n'), result.standard_error.size() - 1)
      << "more than one line: " << result.standard_error;
}

TEST(NbdInfoTest, TextOutputShowsSizeFlagsBlockSizesAndContexts) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(NamedExportsArguments()));
  ASSERT_OK_AND_ASSIGN(CommandResult result, NbdInfo({server->uri("alpha")}));
  ASSERT_EQ(result.exit_code, 0) << result.standard_error;
  EXPECT_EQ(result.standard_error, "");
  std::vector<std::string> lines = absl::StrSplit(result.standard_output, '\n');
  EXPECT_THAT(lines, ElementsAre("export: \"alpha\"", "size: 67108864 (64 MiB)", "read-only: no",
                                 "flush: yes", "fua: yes", "trim: yes", "zero: yes",
                                 "fast-zero: yes", "cache: yes", "df: yes", "multi-conn: yes",
                                 "rotational: no", "resize: no",
                                 "block-size: minimum 1, preferred 4096, maximum 33554432 (not "
                                 "advertised; spec defaults)",
                                 "reply-mode: structured", "description: Test disk",
                                 ::testing::MatchesRegex("meta-contexts: base:allocation \\(id "
                                                         "[0-9]+\\)"),
                                 "meta-contexts-offered: base:allocation", ""));
}

TEST(NbdInfoTest, ReadOnlyExportAndAdvertisedBlockSizes) {
  ASSERT_OK_AND_ASSIGN(auto server,
                       ServerProcess::StartNbdkit({"-r", "--filter=blocksize-policy", "memory",
                                                   "1536K", "blocksize-minimum=512",
                                                   "blocksize-preferred=65536",
                                                   "blocksize-maximum=1048576"}));
  ASSERT_OK_AND_ASSIGN(CommandResult result, NbdInfo({server->uri()}));
  ASSERT_EQ(result.exit_code, 0) << result.standard_error;
  EXPECT_THAT(result.standard_output, HasSubstr("\nsize: 1572864 (1.5 MiB)\n"));
  EXPECT_THAT(result.standard_output, HasSubstr("\nread-only: yes\n"));
  EXPECT_THAT(result.standard_output, HasSubstr("\ntrim: no\n"));
  EXPECT_THAT(result.standard_output, HasSubstr("\nzero: no\n"));
  EXPECT_THAT(result.standard_output, HasSubstr("\nfua: no\n"));
  EXPECT_THAT(result.standard_output,
              HasSubstr("\nblock-size: minimum 512, preferred 65536, maximum 1048576\n"));
  EXPECT_THAT(result.standard_output, HasSubstr("\ndescription: (none)\n"));
}

TEST(NbdInfoTest, JsonOutputForScripts) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(NamedExportsArguments()));
  ASSERT_OK_AND_ASSIGN(CommandResult result, NbdInfo({"--json", server->uri("beta")}));
  ASSERT_EQ(result.exit_code, 0) << result.standard_error;
  nlohmann::json document = nlohmann::json::parse(result.standard_output, nullptr, false);
  ASSERT_FALSE(document.is_discarded()) << result.standard_output;
  // nbdinfo's shape and key names (tools/info/json_output.h).
  EXPECT_EQ(document["protocol"], "newstyle-fixed");
  EXPECT_EQ(document["TLS"], false);
  EXPECT_EQ(document["structured"], true);
  ASSERT_EQ(document["exports"].size(), 1u);
  const nlohmann::json& beta = document["exports"][0];
  EXPECT_EQ(beta["export-name"], "beta");
  EXPECT_EQ(beta["export-size"], 64u << 20);
  EXPECT_EQ(beta["export-size-str"], "64M");
  EXPECT_EQ(beta["description"], "Test disk");
  EXPECT_EQ(beta["reply_mode"], "structured");
  EXPECT_EQ(beta["is_read_only"], false);
  EXPECT_EQ(beta["can_fast_zero"], true);
  EXPECT_EQ(beta["can_multi_conn"], true);
  EXPECT_EQ(beta["can_resize"], false);
  // Block sizes only when the server sent them, as nbdinfo.
  EXPECT_FALSE(beta.contains("block_size_maximum"));
  ASSERT_EQ(beta["meta_contexts"].size(), 1u);
  EXPECT_EQ(beta["meta_contexts"][0]["name"], "base:allocation");
  EXPECT_EQ(beta["contexts"], nlohmann::json::array({"base:allocation"}));
}

TEST(NbdInfoTest, ListShowsEveryExportWithItsDescription) {
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(NamedExportsArguments()));
  ASSERT_OK_AND_ASSIGN(CommandResult text, NbdInfo({"--list", server->uri()}));
  ASSERT_EQ(text.exit_code, 0) << text.standard_error;
  EXPECT_EQ(text.standard_output, "alpha\tTest disk\nbeta\tTest disk\n");

  // The default export has an empty name, shown as "".
  ASSERT_OK_AND_ASSIGN(auto unnamed,
                       ServerProcess::StartNbdkit({"--filter=exportname", "memory", "1M",
                                                   "exportname-list=defaultonly"}));
  ASSERT_OK_AND_ASSIGN(CommandResult default_only, NbdInfo({"--list", unnamed->uri()}));
  ASSERT_EQ(default_only.exit_code, 0) << default_only.standard_error;
  EXPECT_EQ(default_only.standard_output, "\"\"\n");

  ASSERT_OK_AND_ASSIGN(CommandResult json, NbdInfo({"--list", "--json", server->uri()}));
  ASSERT_EQ(json.exit_code, 0) << json.standard_error;
  nlohmann::json document = nlohmann::json::parse(json.standard_output, nullptr, false);
  ASSERT_FALSE(document.is_discarded()) << json.standard_output;
  ASSERT_EQ(document["exports"].size(), 2u);
  EXPECT_EQ(document["exports"][0]["export-name"], "alpha");
  EXPECT_EQ(document["exports"][1]["description"], "Test disk");
  EXPECT_EQ(document["exports"][1]["export-size"], 64u << 20);
}

TEST(NbdInfoTest, RepeatedMetaContextFlagsAreAllQueried) {
  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string image = dir->File("disk.qcow2");
  ASSERT_OK(RunCommand({"qemu-img", "create", "-q", "-f", "qcow2", image, "8M"}));
  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartQemuNbd(image, "qcow2", 8, {"-A"}));
  ASSERT_OK_AND_ASSIGN(CommandResult result,
                       NbdInfo({"--json", "--meta-context=base:allocation", "--meta-context",
                                "qemu:allocation-depth", server->uri()}));
  ASSERT_OK_AND_ASSIGN(CommandResult comma_separated,
                       NbdInfo({"--json", "--meta_context=base:allocation,qemu:allocation-depth",
                                server->uri()}));
  EXPECT_EQ(comma_separated.standard_output, result.standard_output);
  ASSERT_EQ(result.exit_code, 0) << result.standard_error;
  nlohmann::json document = nlohmann::json::parse(result.standard_output, nullptr, false);
  ASSERT_FALSE(document.is_discarded()) << result.standard_output;
  std::vector<std::string> negotiated;
  const nlohmann::json& disk = document["exports"][0];
  for (const auto& context : disk["meta_contexts"]) negotiated.push_back(context["name"]);
  EXPECT_THAT(negotiated, ::testing::UnorderedElementsAre("base:allocation",
                                                          "qemu:allocation-depth"));
  EXPECT_THAT(disk["contexts"].get<std::vector<std::string>>(),
              ::testing::UnorderedElementsAre("base:allocation", "qemu:allocation-depth"));
  EXPECT_EQ(disk["block_size_minimum"], 1);
}

TEST(NbdInfoTest, ErrorsAreOneLineWithANonZeroExit) {
  ASSERT_OK_AND_ASSIGN(CommandResult bad_uri, NbdInfo({"nbd+tcp://localhost/"}));
  ExpectOneLineError(bad_uri, 1, "nbd+tcp");

  ASSERT_OK_AND_ASSIGN(auto dir, TempDir::Create());
  std::string missing = dir->File("nobody.sock");
  ASSERT_OK_AND_ASSIGN(CommandResult unreachable,
                       NbdInfo({absl::StrCat("nbd+unix:///?socket=", missing)}));
  ExpectOneLineError(unreachable, 1, missing);

  ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::StartNbdkit(NamedExportsArguments()));
  ASSERT_OK_AND_ASSIGN(CommandResult not_found, NbdInfo({server->uri("gamma")}));
  ExpectOneLineError(not_found, 1, "gamma");

  ASSERT_OK_AND_ASSIGN(CommandResult no_uri, NbdInfo({}));
  ExpectOneLineError(no_uri, 2, "expected exactly one URI argument, got 0");
  ASSERT_OK_AND_ASSIGN(CommandResult empty_context, NbdInfo({"--meta-context=", "nbd://x"}));
  ExpectOneLineError(empty_context, 2, "--meta-context needs non-empty context names, got ''");
}

}  // namespace
}  // namespace nbdring::testing
