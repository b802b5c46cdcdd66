// nbd-bench's command line: defaults, every flag reaching BenchOptions, and one-line usage
// errors for everything a user can get wrong.
#include <string>
#include <vector>

#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/bench/flags.h"

namespace nbdbench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ParseCommandLineTest : public ::testing::Test {
 private:
  absl::FlagSaver saver_;  // each test starts from the defaults
};

TEST_F(ParseCommandLineTest, DefaultsMatchTheDocumentedOnes) {
  absl::StatusOr<BenchOptions> options = ParseCommandLine({});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_FALSE(options->help);
  EXPECT_EQ(options->uri, "");
  EXPECT_EQ(options->rw, ReadWrite::kRandRead);
  EXPECT_EQ(options->read_percent, 70);
  EXPECT_EQ(options->block_size, 4096u);
  EXPECT_EQ(options->iodepth, 16);
  EXPECT_EQ(options->connections, 1);
  EXPECT_EQ(options->threads, 1);
  EXPECT_EQ(options->runtime, absl::Seconds(5));
  EXPECT_EQ(options->ramp, absl::Seconds(1));
  EXPECT_EQ(options->size_limit, 0u);
  EXPECT_EQ(options->offset, 0u);
  EXPECT_EQ(options->range, 0u);
  EXPECT_FALSE(options->verify);
  EXPECT_EQ(options->engine, EngineKind::kNbdring);
  EXPECT_FALSE(options->compare);
  EXPECT_EQ(options->rounds, 3);
  EXPECT_FALSE(options->json);
  EXPECT_TRUE(options->cpus.empty());
}

TEST_F(ParseCommandLineTest, EveryFlagIsApplied) {
  absl::StatusOr<BenchOptions> options = ParseCommandLine(
      {"--rw=randrw", "--rwmixread=30",  "--bs=64k",    "--iodepth",
       "8",           "--connections=4", "--threads=2", "--runtime=500ms",
       "--ramp=0s",   "--size=1g",       "--offset=1m", "--range=512m",
       "--verify",    "--engine=libnbd", "--compare",   "--rounds=5",
       "--json",      "--cpus=0-1",      "--prefill",   "nbd+unix:///disk?socket=/tmp/s"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->uri, "nbd+unix:///disk?socket=/tmp/s");
  EXPECT_EQ(options->rw, ReadWrite::kRandRw);
  EXPECT_EQ(options->read_percent, 30);
  EXPECT_EQ(options->block_size, 65536u);
  EXPECT_EQ(options->iodepth, 8);
  EXPECT_EQ(options->connections, 4);
  EXPECT_EQ(options->threads, 2);
  EXPECT_EQ(options->runtime, absl::Milliseconds(500));
  EXPECT_EQ(options->ramp, absl::ZeroDuration());
  EXPECT_EQ(options->size_limit, uint64_t{1} << 30);
  EXPECT_EQ(options->offset, uint64_t{1} << 20);
  EXPECT_EQ(options->range, uint64_t{512} << 20);
  EXPECT_TRUE(options->verify);
  EXPECT_EQ(options->engine, EngineKind::kLibnbd);
  EXPECT_TRUE(options->compare);
  EXPECT_EQ(options->rounds, 5);
  EXPECT_TRUE(options->json);
  EXPECT_THAT(options->cpus, ElementsAre(0, 1));
  EXPECT_TRUE(options->prefill);
}

TEST_F(ParseCommandLineTest, BooleanFlagsTakeNoPrefixAndExplicitValues) {
  absl::StatusOr<BenchOptions> options = ParseCommandLine({"--verify", "--noverify"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_FALSE(options->verify);
  options = ParseCommandLine({"--json=true", "--compare=false"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_TRUE(options->json);
  EXPECT_FALSE(options->compare);
}

TEST_F(ParseCommandLineTest, RuntimeZeroWithSizeMeansSizeOnly) {
  absl::StatusOr<BenchOptions> options = ParseCommandLine({"--runtime=0", "--size=100m"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->runtime, absl::ZeroDuration());
  EXPECT_EQ(options->size_limit, uint64_t{100} << 20);
}

TEST_F(ParseCommandLineTest, HelpIsRecognised) {
  for (const char* flag : {"--help", "-h", "-help"}) {
    absl::StatusOr<BenchOptions> options = ParseCommandLine({flag});
    ASSERT_TRUE(options.ok()) << flag;
    EXPECT_TRUE(options->help) << flag;
  }
  const std::string help = HelpText();
  EXPECT_THAT(help, HasSubstr("Usage: nbd-bench [URI] [flags]"));
  EXPECT_THAT(help, HasSubstr("--iodepth"));
  EXPECT_THAT(help, HasSubstr("(default: 16)"));
  EXPECT_THAT(help, HasSubstr("taskset -c 1"));
}

TEST_F(ParseCommandLineTest, InflightLimitIsAutoANumberOrTheDepth) {
  absl::StatusOr<BenchOptions> options = ParseCommandLine({});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->inflight_limit, -1);  // follows --iodepth
  for (const auto& [value, expected] :
       {std::pair<const char*, int>{"auto", 0}, {"0", 0}, {"32", 32}, {"65536", 65536}}) {
    absl::FlagSaver saver;
    options = ParseCommandLine({"--iodepth=256", absl::StrCat("--inflight_limit=", value)});
    ASSERT_TRUE(options.ok()) << options.status();
    EXPECT_EQ(options->inflight_limit, expected) << value;
    EXPECT_EQ(options->iodepth, 256);
  }
}

TEST_F(ParseCommandLineTest, UsageErrorsAreOneLineInvalidArgument) {
  const std::vector<std::pair<std::vector<std::string>, const char*>> cases = {
      {{"--bogus=1"}, "unknown flag \"--bogus=1\" (see --help)"},
      {{"--noiodepth"}, "unknown flag \"--noiodepth\""},
      {{"--bs=4x"}, "--bs: size \"4x\" has an unknown suffix"},
      {{"--bs=0"}, "--bs must be at least 1 byte"},
      {{"--bs=4g"}, "--bs=4g is over 2 GiB"},
      {{"--size=lots"}, "--size: size \"lots\" must start with a number"},
      {{"--range=1q"}, "--range: size \"1q\" has an unknown suffix"},
      {{"--rw=randomread"}, "--rw must be one of randread, randwrite, read, write, randrw"},
      {{"--iodepth=0"}, "--iodepth=0 is out of range [1, 65536]"},
      {{"--iodepth=x"}, "--iodepth=x: "},
      {{"--iodepth"}, "flag --iodepth needs a value"},
      {{"--iodepth=1,70000"}, "--iodepth=1,70000: 70000 is out of range [1, 65536]"},
      {{"--inflight_limit=autox"},
       "--inflight_limit=autox: give a number from 1 to 65536, or auto"},
      {{"--inflight_limit=-1"},
       "--inflight_limit=-1: give a number from 1 to 65536, or auto"},
      {{"--inflight_limit=70000"},
       "--inflight_limit=70000: give a number from 1 to 65536, or auto"},
      {{"--rwmixread=101"}, "--rwmixread=101 is out of range [0, 100]"},
      {{"--connections=0"}, "--connections=0 is out of range"},
      {{"--runtime=abc"}, "--runtime=abc: "},
      {{"--runtime=0s"}, "--runtime=0 means \"until --size is reached\", but --size is not set"},
      {{"--ramp=-1s"}, "must not be negative"},
      {{"--engine=fio"}, "--engine must be nbdring or libnbd, got \"fio\""},
      {{"--cpus=1-"}, "--cpus: \"1-\" is not a CPU number or range"},
      {{"nbd://a/", "nbd://b/"}, "more than one URI given: \"nbd://a/\" and \"nbd://b/\""},
  };
  for (const auto& [arguments, message] : cases) {
    absl::FlagSaver saver;
    absl::StatusOr<BenchOptions> options = ParseCommandLine(arguments);
    ASSERT_FALSE(options.ok()) << arguments[0];
    EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument) << arguments[0];
    EXPECT_THAT(options.status().message(), HasSubstr(message)) << arguments[0];
    EXPECT_EQ(options.status().message().find('\n'), absl::string_view::npos) << arguments[0];
  }
}

TEST_F(ParseCommandLineTest, CommaListsOfDepthsAndConnectionsMakeASweep) {
  absl::StatusOr<BenchOptions> options = ParseCommandLine({});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_THAT(options->iodepths, ElementsAre(16));
  EXPECT_THAT(options->connection_counts, ElementsAre(1));
  EXPECT_FALSE(options->sweep());

  options = ParseCommandLine({"--iodepth=64,1,4", "--connections=2,1"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_THAT(options->iodepths, ElementsAre(64, 1, 4));  // run in the order given
  EXPECT_THAT(options->connection_counts, ElementsAre(2, 1));
  EXPECT_EQ(options->iodepth, 64);
  EXPECT_EQ(options->connections, 2);
  EXPECT_TRUE(options->sweep());

  // A plot of one combination is still drawn, so it goes the sweep's way.
  options = ParseCommandLine({"--plot=out.png"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->plot_path, "out.png");
  EXPECT_TRUE(options->sweep());
}

TEST_F(ParseCommandLineTest, BadListsNameTheFlagAndTheValue) {
  const std::vector<std::pair<std::string, const char*>> cases = {
      {"--iodepth=1,x", "--iodepth=1,x: \"x\" is not a whole number"},
      {"--iodepth=1,0", "--iodepth=1,0: 0 is out of range [1, 65536]"},
      {"--iodepth=4,-1", "--iodepth=4,-1: -1 is out of range [1, 65536]"},
      {"--iodepth=1,99999999999", "--iodepth=1,99999999999: \"99999999999\" is not"},
      {"--iodepth=1,", "--iodepth=1,: \"\" is not a whole number"},
      {"--iodepth=8,8", "--iodepth=8,8: 8 is given twice"},
      {"--connections=1,257", "--connections=1,257: 257 is out of range [1, 256]"},
      {"--plot=out.jpg", "--plot=out.jpg: the file name must end in .svg or .png"},
  };
  for (const auto& [argument, message] : cases) {
    absl::FlagSaver saver;
    absl::StatusOr<BenchOptions> options = ParseCommandLine({argument});
    ASSERT_FALSE(options.ok()) << argument;
    EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument) << argument;
    EXPECT_THAT(options.status().message(), HasSubstr(message)) << argument;
  }
}

TEST_F(ParseCommandLineTest, DoubleDashEndsFlags) {
  absl::StatusOr<BenchOptions> options = ParseCommandLine({"--json", "--", "-odd-uri"});
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->uri, "-odd-uri");
  EXPECT_TRUE(options->json);
}

}  // namespace
}  // namespace nbdbench
