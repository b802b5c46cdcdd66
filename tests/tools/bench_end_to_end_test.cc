// Runs the real nbd-bench binary: short verified runs of both engines against its embedded
// nbdkit server with JSON output, --compare's shape, --size, and the exit status and
// one-line message of the errors users hit.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/server_process.h"
#include "tests/tools/bench_runner.h"

namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

using ::nbdbench::testing::Outcome;
using ::nbdbench::testing::RunBench;

void ExpectOneRun(const nlohmann::json& run, const std::string& engine) {
  EXPECT_EQ(run["engine"], engine);
  EXPECT_EQ(run["bs"], 4096);
  EXPECT_GT(run["ios"].get<uint64_t>(), 0u);
  EXPECT_GT(run["iops"].get<double>(), 0);
  EXPECT_GT(run["seconds"].get<double>(), 0);
  EXPECT_GT(run["lat_us"]["p50"].get<double>(), 0);
  EXPECT_GE(run["lat_us"]["max"].get<double>(), run["lat_us"]["p999"].get<double>());
  EXPECT_GE(run["lat_us"]["p999"].get<double>(), run["lat_us"]["p50"].get<double>());
  EXPECT_GT(run["cpu_us_per_io"].get<double>(), 0);
  if (engine == "nbdring") {
    EXPECT_GT(run["enters_per_io"].get<double>(), 0);
  } else {
    EXPECT_TRUE(run["enters_per_io"].is_null());
  }
}

class VerifiedRunTest : public ::testing::TestWithParam<const char*> {};

TEST_P(VerifiedRunTest, OneSecondWithVerifyAgainstTheEmbeddedServer) {
  const std::string engine = GetParam();
  const Outcome outcome = RunBench({"--engine=" + engine, "--verify", "--rw=randrw", "--runtime=1s",
                                    "--ramp=200ms", "--range=64m", "--iodepth=8", "--json"});
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const nlohmann::json run =
      nlohmann::json::parse(outcome.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(run.is_discarded()) << "not JSON: " << outcome.out;
  ExpectOneRun(run, engine);
  EXPECT_EQ(run["rw"], "randrw");
  EXPECT_EQ(run["iodepth"], 8);
  EXPECT_NEAR(run["seconds"].get<double>(), 1.0, 0.01);
}

INSTANTIATE_TEST_SUITE_P(Engines, VerifiedRunTest, ::testing::Values("nbdring", "libnbd"));

TEST(BenchEndToEndTest, CompareReportsRoundsAndMedianRatios) {
  const Outcome outcome = RunBench(
      {"--compare", "--rounds=1", "--runtime=300ms", "--ramp=100ms", "--range=16m", "--json"});
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const nlohmann::json json = nlohmann::json::parse(outcome.out, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << "not JSON: " << outcome.out;
  ASSERT_EQ(json["rounds"].size(), 1u);
  ExpectOneRun(json["rounds"][0]["nbdring"], "nbdring");
  ExpectOneRun(json["rounds"][0]["libnbd"], "libnbd");
  EXPECT_GT(json["median_ratio"]["iops"].get<double>(), 0);
  EXPECT_GT(json["median_ratio"]["cpu_us_per_io"].get<double>(), 0);
}

TEST(BenchEndToEndTest, SizeEndsTheRunAfterThatManyBytes) {
  const Outcome outcome =
      RunBench({"--size=4m", "--runtime=0", "--ramp=0", "--iodepth=4", "--range=16m", "--json"});
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const nlohmann::json run = nlohmann::json::parse(outcome.out, nullptr, false);
  ASSERT_FALSE(run.is_discarded()) << "not JSON: " << outcome.out;
  // 1024 I/Os of 4 KiB make 4 MiB; completions that land in the same instant may add a few.
  EXPECT_GE(run["ios"].get<uint64_t>(), 1024u);
  EXPECT_LE(run["ios"].get<uint64_t>(), 1024u + 4);
}

TEST(BenchEndToEndTest, HumanOutputHasTheTable) {
  const Outcome outcome = RunBench({"--runtime=200ms", "--ramp=0", "--range=16m"});
  ASSERT_EQ(outcome.exit_status, 0) << outcome.err;
  const std::vector<std::string> lines = absl::StrSplit(outcome.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << outcome.out;  // workload, header, one row; no status line
  EXPECT_THAT(lines[0], StartsWith("randread bs=4096 iodepth=16 connections=1 threads=1"));
  EXPECT_THAT(lines[1], HasSubstr("IOPS"));
  EXPECT_THAT(lines[2], StartsWith("nbdring "));
  EXPECT_EQ(outcome.out.find('\r'), std::string::npos);
}

// Errors: one line on stderr, exit status 2 for usage errors and 1 for everything else.
void ExpectOneLineError(const Outcome& outcome, int exit_status, const std::string& message) {
  EXPECT_EQ(outcome.exit_status, exit_status);
  EXPECT_THAT(outcome.err, StartsWith("nbd-bench: "));
  EXPECT_THAT(outcome.err, HasSubstr(message));
  EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1) << outcome.err;
  EXPECT_EQ(outcome.out, "");
}

TEST(BenchEndToEndTest, BadFlagValueIsAUsageError) {
  ExpectOneLineError(RunBench({"--bs=4x"}), 2, "--bs: size \"4x\" has an unknown suffix");
  ExpectOneLineError(RunBench({"--frobnicate"}), 2, "unknown flag \"--frobnicate\"");
}

TEST(BenchEndToEndTest, MissingNbdkitSaysHowToInstallIt) {
  ExpectOneLineError(RunBench({"--runtime=1s"}, "PATH=/nonexistent"), 1,
                     "install it with `apt-get install nbdkit` (or run tools/setup.sh)");
}

TEST(BenchEndToEndTest, UnreachableServerFails) {
  ExpectOneLineError(RunBench({"nbd+unix:///?socket=/nonexistent/nbd.sock"}), 1,
                     "cannot use nbd+unix:///?socket=/nonexistent/nbd.sock");
}

TEST(BenchEndToEndTest, BlockLargerThanTheRegionFails) {
  ExpectOneLineError(RunBench({"--range=4k", "--bs=8k"}), 1,
                     "--bs=8192 is larger than the region used (4096 bytes at offset 0)");
}

TEST(BenchEndToEndTest, RegionPastTheEndFails) {
  ExpectOneLineError(RunBench({"--offset=1g"}), 1,
                     "--offset=1073741824 is not inside the export (1073741824 bytes)");
}

TEST(BenchEndToEndTest, WriteWorkloadOnReadOnlyExportFails) {
  absl::StatusOr<std::unique_ptr<nbd::testing::ServerProcess>> server =
      nbd::testing::ServerProcess::StartNbdkit({"-r", "memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ExpectOneLineError(RunBench({(*server)->uri(), "--rw=randwrite"}), 1,
                     "the export is read-only, but --rw=randwrite writes to it");
}

TEST(BenchEndToEndTest, VerifyCatchesAServerThatDropsWrites) {
  // nbdkit's null plugin accepts writes and forgets them: every read returns zeroes.
  absl::StatusOr<std::unique_ptr<nbd::testing::ServerProcess>> server =
      nbd::testing::ServerProcess::StartNbdkit({"null", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  for (const char* engine : {"--engine=nbdring", "--engine=libnbd"}) {
    const Outcome outcome = RunBench({(*server)->uri(), engine, "--verify", "--runtime=1s"});
    EXPECT_EQ(outcome.exit_status, 1) << engine;
    EXPECT_THAT(outcome.err, HasSubstr("nbd-bench: VERIFY FAILED: byte at offset ")) << engine;
    EXPECT_THAT(outcome.err, HasSubstr("reads 0x00, expected 0x")) << engine;
  }
}

}  // namespace
