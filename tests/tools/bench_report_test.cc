// nbd-bench's output: the JSON schema scripts rely on, derived numbers, and --compare's
// median ratios.
#include <algorithm>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/tools/json_keys.h"
#include "tools/bench/report.h"

namespace nbdbench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

RunResult MakeResult(EngineKind engine, uint64_t ios, double seconds, double cpu_seconds) {
  RunResult result;
  result.engine = engine;
  result.rw = ReadWrite::kRandRead;
  result.block_size = 4096;
  result.iodepth = 16;
  result.connections = 1;
  result.threads = 1;
  result.ios = ios;
  result.bytes = ios * 4096;
  result.seconds = seconds;
  result.cpu_seconds = cpu_seconds;
  for (uint64_t i = 1; i <= 1000; ++i) result.latency.Record(i * 1000);  // 1..1000 µs
  if (engine == EngineKind::kNbdring) {
    result.enters = ios / 8;
    result.sqes = ios;
  }
  return result;
}

using ::nbdbench::testing::Keys;

TEST(MedianTest, OddEvenAndEmpty) {
  EXPECT_EQ(Median({}), 0.0);
  EXPECT_EQ(Median({3.0}), 3.0);
  EXPECT_EQ(Median({5.0, 1.0, 3.0}), 3.0);
  EXPECT_EQ(Median({4.0, 1.0, 3.0, 2.0}), 2.5);
}

TEST(RunJsonTest, HasExactlyTheDocumentedKeysAndValues) {
  const RunResult result = MakeResult(EngineKind::kNbdring, 800'000, 4.0, 2.0);
  const nlohmann::ordered_json json = RunJson(result);
  EXPECT_THAT(Keys(json),
              ElementsAre("engine", "rw", "bs", "iodepth", "connections", "threads", "ios",
                          "seconds", "iops", "mib_per_s", "lat_us", "cpu_us_per_io", "cpu_percent",
                          "enters_per_io", "sqes_per_enter", "connection_iops",
                          "inflight_limit", "wire_lat_us"));
  EXPECT_THAT(Keys(json["lat_us"]), ElementsAre("p50", "p90", "p99", "p999", "max"));
  EXPECT_TRUE(json["connection_iops"].is_null());
  EXPECT_TRUE(json["inflight_limit"].is_null());
  EXPECT_TRUE(json["wire_lat_us"].is_null());
  EXPECT_EQ(json["engine"], "nbdring");
  EXPECT_EQ(json["rw"], "randread");
  EXPECT_EQ(json["bs"], 4096);
  EXPECT_EQ(json["ios"], 800'000);
  EXPECT_DOUBLE_EQ(json["iops"].get<double>(), 200'000.0);
  EXPECT_DOUBLE_EQ(json["mib_per_s"].get<double>(), 200'000.0 * 4096 / (1 << 20));
  EXPECT_DOUBLE_EQ(json["cpu_us_per_io"].get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(json["cpu_percent"].get<double>(), 50.0);
  EXPECT_DOUBLE_EQ(json["enters_per_io"].get<double>(), 0.125);
  EXPECT_DOUBLE_EQ(json["sqes_per_enter"].get<double>(), 8.0);
  EXPECT_NEAR(json["lat_us"]["p50"].get<double>(), 500.0, 500.0 / 128);
  EXPECT_NEAR(json["lat_us"]["p999"].get<double>(), 999.0, 999.0 / 128);
  EXPECT_DOUBLE_EQ(json["lat_us"]["max"].get<double>(), 1000.0);
}

TEST(RunJsonTest, ConnectionSpreadFromPerConnectionCounts) {
  RunResult result = MakeResult(EngineKind::kNbdring, 1000, 2.0, 1.0);
  result.connection_ios = {400, 100, 300, 200};  // over 2 s
  const nlohmann::ordered_json json = RunJson(result);
  EXPECT_DOUBLE_EQ(json["connection_iops"]["min"].get<double>(), 50.0);
  EXPECT_DOUBLE_EQ(json["connection_iops"]["median"].get<double>(), 125.0);
  EXPECT_DOUBLE_EQ(json["connection_iops"]["max"].get<double>(), 200.0);
  EXPECT_THAT(SpreadLine(result), ::testing::HasSubstr("min 50, median 125, max 200 (max/min 4.00)"));
  result.connection_ios = {400};
  EXPECT_EQ(SpreadLine(result), "");
}

TEST(RunJsonTest, InflightLimitAndWireLatencyWhenTheEngineHasThem) {
  RunResult result = MakeResult(EngineKind::kNbdring, 1000, 1.0, 0.5);
  result.inflight_limit = 18;
  result.wire_p50_ns = 250'000;
  result.wire_p99_ns = 1'500'000;
  const nlohmann::ordered_json json = RunJson(result);
  EXPECT_EQ(json["inflight_limit"], 18);
  EXPECT_DOUBLE_EQ(json["wire_lat_us"]["p50"].get<double>(), 250.0);
  EXPECT_DOUBLE_EQ(json["wire_lat_us"]["p99"].get<double>(), 1500.0);
  EXPECT_THAT(TableRow("nbdring", result),
              ::testing::HasSubstr("limit 18 (wire p50/p99 250.0/1500.0µs)"));
}

TEST(HistogramLinesTest, OneLinePerOccupiedPowerOfTwoOfMicroseconds) {
  LatencyHistogram histogram;
  EXPECT_EQ(HistogramLines(histogram), "");
  for (int i = 0; i < 3; ++i) histogram.Record(150'000);  // 150 µs: [128, 256)
  histogram.Record(3'000'000);                            // 3 ms: [2048, 4096)
  const std::string lines = HistogramLines(histogram);
  EXPECT_THAT(lines, ::testing::HasSubstr("[     128,      256) µs          3  75.00 %  cumulative  75.00 %"));
  EXPECT_THAT(lines, ::testing::HasSubstr("[    2048,     4096) µs          1  25.00 %  cumulative 100.00 %"));
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 2);
}

TEST(RunJsonTest, LibnbdHasNullIoUringCountersAndNotesWhenGiven) {
  RunResult result = MakeResult(EngineKind::kLibnbd, 1000, 1.0, 0.5);
  result.notes = {"libnbd: using 1 connection instead of 4"};
  result.interrupted = true;
  const nlohmann::ordered_json json = RunJson(result);
  EXPECT_EQ(json["engine"], "libnbd");
  EXPECT_TRUE(json["enters_per_io"].is_null());
  EXPECT_TRUE(json["sqes_per_enter"].is_null());
  EXPECT_EQ(json["interrupted"], true);
  EXPECT_EQ(json["notes"][0], "libnbd: using 1 connection instead of 4");
}

TEST(CompareJsonTest, MedianRatiosOverRounds) {
  // nbdring/libnbd IOPS ratios 1.5, 2.0, 1.2 (median 1.5); CPU-µs/IO ratios 0.5, 0.25, 0.4
  // (median 0.4).
  std::vector<CompareRound> rounds = {
      {MakeResult(EngineKind::kNbdring, 150, 1.0, 150e-6 * 1.0),
       MakeResult(EngineKind::kLibnbd, 100, 1.0, 100e-6 * 2.0)},
      {MakeResult(EngineKind::kNbdring, 200, 1.0, 200e-6 * 1.0),
       MakeResult(EngineKind::kLibnbd, 100, 1.0, 100e-6 * 4.0)},
      {MakeResult(EngineKind::kNbdring, 120, 1.0, 120e-6 * 2.0),
       MakeResult(EngineKind::kLibnbd, 100, 1.0, 100e-6 * 5.0)},
  };
  const MedianRatios ratios = ComputeMedianRatios(rounds);
  EXPECT_DOUBLE_EQ(ratios.iops, 1.5);
  EXPECT_DOUBLE_EQ(ratios.cpu_us_per_io, 0.4);

  const nlohmann::ordered_json json = CompareJson(rounds);
  EXPECT_THAT(Keys(json), ElementsAre("rounds", "median_ratio"));
  ASSERT_EQ(json["rounds"].size(), 3u);
  EXPECT_EQ(json["rounds"][1]["nbdring"]["ios"], 200);
  EXPECT_EQ(json["rounds"][1]["libnbd"]["engine"], "libnbd");
  EXPECT_DOUBLE_EQ(json["median_ratio"]["iops"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(json["median_ratio"]["cpu_us_per_io"].get<double>(), 0.4);
  EXPECT_THAT(CompareSummary(rounds),
              HasSubstr("median over 3 rounds, nbdring/libnbd: IOPS x1.500, CPU-µs/IO x0.400"));
}

TEST(TableTest, RowsShowTheNumbersAndDashesForMissingCounters) {
  const std::string row = TableRow("nbdring", MakeResult(EngineKind::kNbdring, 800'000, 4.0, 2.0));
  EXPECT_THAT(row, HasSubstr("200000"));
  EXPECT_THAT(row, HasSubstr("0.125"));
  const std::string libnbd_row = TableRow("libnbd", MakeResult(EngineKind::kLibnbd, 10, 1.0, 0));
  EXPECT_THAT(libnbd_row, HasSubstr(" - "));
  EXPECT_THAT(TableHeader(), HasSubstr("enters/IO"));
}

}  // namespace
}  // namespace nbdbench
