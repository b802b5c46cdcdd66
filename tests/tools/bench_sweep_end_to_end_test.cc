// Runs the real nbd-bench binary over --iodepth and --connections lists against a real nbdkit
// memory server on a Unix socket: every combination in the JSON with plausible numbers, one
// table in the human output, --plot's SVG and PNG, and the usage errors of bad lists.
#include <algorithm>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/server_process.h"
#include "tests/tools/bench_runner.h"

namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::nbdbench::testing::Outcome;
using ::nbdbench::testing::RunBench;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class BenchSweepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::StartNbdkit({"memory", "64M"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A short sweep's flags on this server.
  std::vector<std::string> Sweep(std::vector<std::string> flags) const {
    flags.insert(flags.begin(), {server_->uri(), "--runtime=200ms", "--ramp=0", "--range=16m"});
    return flags;
  }

  std::unique_ptr<ServerProcess> server_;
};

std::string ReadWholeFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

void ExpectPlausibleRun(const nlohmann::json& run, const std::string& engine, int iodepth,
                        int connections) {
  SCOPED_TRACE(engine + " iodepth=" + std::to_string(iodepth) +
               " connections=" + std::to_string(connections));
  EXPECT_EQ(run["engine"], engine);
  EXPECT_EQ(run["iodepth"], iodepth);
  EXPECT_EQ(run["connections"], connections);
  EXPECT_GT(run["ios"].get<uint64_t>(), 0u);
  EXPECT_GT(run["iops"].get<double>(), 0);
  EXPECT_GT(run["lat_us"]["p50"].get<double>(), 0);
  EXPECT_GE(run["lat_us"]["p99"].get<double>(), run["lat_us"]["p50"].get<double>());
  EXPECT_GE(run["lat_us"]["p999"].get<double>(), run["lat_us"]["p99"].get<double>());
  EXPECT_GT(run["cpu_us_per_io"].get<double>(), 0);
  if (engine == "nbdring") {
    EXPECT_GT(run["enters_per_io"].get<double>(), 0);
  } else {
    EXPECT_TRUE(run["enters_per_io"].is_null());
  }
}

TEST_F(BenchSweepTest, CompareSweepHasEveryCombinationWithBothEngines) {
  const Outcome outcome = RunBench(Sweep(
      {"--iodepth=1,4", "--connections=1,2", "--compare", "--rounds=1", "--json"}));
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const nlohmann::json json = nlohmann::json::parse(outcome.out, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << "not JSON: " << outcome.out;
  EXPECT_EQ(json["rounds"], 1);
  ASSERT_EQ(json["sweep"].size(), 4u);
  // Connections in the outer loop, iodepth in the inner one, as given.
  const std::pair<int, int> expected[] = {{1, 1}, {4, 1}, {1, 2}, {4, 2}};
  for (size_t i = 0; i < 4; ++i) {
    const nlohmann::json& point = json["sweep"][i];
    const auto [iodepth, connections] = expected[i];
    EXPECT_EQ(point["iodepth"], iodepth);
    EXPECT_EQ(point["connections"], connections);
    ASSERT_EQ(point["engines"].size(), 2u);
    ExpectPlausibleRun(point["engines"]["nbdring"], "nbdring", iodepth, connections);
    ExpectPlausibleRun(point["engines"]["libnbd"], "libnbd", iodepth, connections);
    EXPECT_GT(point["median_ratio"]["iops"].get<double>(), 0);
  }
}

TEST_F(BenchSweepTest, OneEngineSweepPrintsOneTableAtTheEnd) {
  const Outcome outcome = RunBench(Sweep({"--iodepth=1,4", "--connections=1,2"}));
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const std::vector<std::string> lines = absl::StrSplit(outcome.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 6u) << outcome.out;  // workload, header, four rows
  EXPECT_THAT(lines[0], StartsWith("randread bs=4096 iodepth=1,4 connections=1,2 threads=1"));
  EXPECT_THAT(lines[1], StartsWith("iodepth conns engine "));
  EXPECT_THAT(lines[1], HasSubstr("p99µs"));
  EXPECT_THAT(lines[1], HasSubstr("enters/IO"));
  EXPECT_THAT(lines[2], StartsWith("      1     1 nbdring "));
  EXPECT_THAT(lines[3], StartsWith("      4     1 nbdring "));
  EXPECT_THAT(lines[4], StartsWith("      1     2 nbdring "));
  EXPECT_THAT(lines[5], StartsWith("      4     2 nbdring "));
}

TEST_F(BenchSweepTest, PlotWritesAnSvgAndAPng) {
  absl::StatusOr<std::unique_ptr<TempDir>> dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string svg = (*dir)->File("out.svg");
  Outcome outcome = RunBench(Sweep({"--iodepth=1,4", "--plot=" + svg}));
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const std::string svg_text = ReadWholeFile(svg);
  EXPECT_THAT(svg_text, HasSubstr("<svg"));
  EXPECT_THAT(svg_text, HasSubstr("nbdring, 1 connection"));  // the line's title
  EXPECT_THAT(svg_text, HasSubstr("p99 latency"));            // the second panel

  const std::string png = (*dir)->File("out.png");
  outcome = RunBench(Sweep({"--iodepth=2,8", "--json", "--plot=" + png}));
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  EXPECT_THAT(ReadWholeFile(png), StartsWith("\x89PNG"));
}

// Errors: one line on stderr naming the flag and value, nothing on stdout.
void ExpectOneLineError(const Outcome& outcome, int exit_status, const std::string& message) {
  EXPECT_EQ(outcome.exit_status, exit_status);
  EXPECT_THAT(outcome.err, StartsWith("nbd-bench: "));
  EXPECT_THAT(outcome.err, HasSubstr(message));
  EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1) << outcome.err;
  EXPECT_EQ(outcome.out, "");
}

TEST(BenchSweepErrorsTest, BadListsAreUsageErrorsNamingTheValue) {
  ExpectOneLineError(RunBench({"--iodepth=1,x"}), 2, "--iodepth=1,x: \"x\" is not a whole number");
  ExpectOneLineError(RunBench({"--iodepth=0"}), 2, "--iodepth=0 is out of range [1, 65536]");
  ExpectOneLineError(RunBench({"--iodepth=1,100000"}), 2,
                     "--iodepth=1,100000: 100000 is out of range [1, 65536]");
  ExpectOneLineError(RunBench({"--connections=1,,2"}), 2, "--connections=1,,2: \"\" is not");
  ExpectOneLineError(RunBench({"--connections=2,2"}), 2, "--connections=2,2: 2 is given twice");
  ExpectOneLineError(RunBench({"--plot=out.pdf"}), 2,
                     "--plot=out.pdf: the file name must end in .svg or .png");
}

TEST(BenchSweepErrorsTest, PlotProblemsAreReportedBeforeRunning) {
  ExpectOneLineError(RunBench({"--plot=out.svg"}, "PATH=/nonexistent"), 1,
                     "--plot needs gnuplot, which is not installed: install it with `apt-get "
                     "install gnuplot-nox`");
  ExpectOneLineError(RunBench({"--plot=/nonexistent/out.svg"}), 1,
                     "--plot=/nonexistent/out.svg: cannot write in /nonexistent");
}

}  // namespace
