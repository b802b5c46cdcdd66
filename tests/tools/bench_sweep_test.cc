// A sweep's results: the median run per engine, the documented JSON shape, the one table.
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/tools/json_keys.h"
#include "tools/bench/sweep.h"

namespace nbdbench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

RunResult MakeResult(EngineKind engine, int iodepth, int connections, uint64_t ios) {
  RunResult result;
  result.engine = engine;
  result.block_size = 4096;
  result.iodepth = iodepth;
  result.connections = connections;
  result.threads = 1;
  result.ios = ios;
  result.bytes = ios * 4096;
  result.seconds = 1.0;
  result.cpu_seconds = 0.5;
  result.latency.Record(100'000);
  if (engine == EngineKind::kNbdring) {
    result.enters = ios;
    result.sqes = ios;
  }
  return result;
}

using ::nbdbench::testing::Keys;

// Three --compare rounds at iodepth 4 x 2 connections: nbdring IOPS 300, 100, 200.
SweepPoint ComparePoint() {
  SweepPoint point{4, 2, {}};
  for (uint64_t nbdring_ios : {300, 100, 200}) {
    point.runs.push_back(MakeResult(EngineKind::kNbdring, 4, 2, nbdring_ios));
    point.runs.push_back(MakeResult(EngineKind::kLibnbd, 4, 2, 100));
  }
  return point;
}

TEST(SweepTest, MedianRunIsTheRunWithTheMedianIops) {
  const SweepPoint point = ComparePoint();
  EXPECT_THAT(EnginesRun(point), ElementsAre(EngineKind::kNbdring, EngineKind::kLibnbd));
  ASSERT_NE(MedianRun(point, EngineKind::kNbdring), nullptr);
  EXPECT_EQ(MedianRun(point, EngineKind::kNbdring)->ios, 200u);
  EXPECT_EQ(CompareRounds(point).size(), 3u);

  SweepPoint two{1, 1, {MakeResult(EngineKind::kNbdring, 1, 1, 50),
                        MakeResult(EngineKind::kNbdring, 1, 1, 10)}};
  EXPECT_EQ(MedianRun(two, EngineKind::kNbdring)->ios, 10u);  // the lower middle
  EXPECT_EQ(MedianRun(two, EngineKind::kLibnbd), nullptr);
}

TEST(SweepTest, JsonHasTheDocumentedShape) {
  const std::vector<SweepPoint> points = {
      {1, 2, {MakeResult(EngineKind::kNbdring, 1, 2, 70)}},
      ComparePoint(),
  };
  const nlohmann::ordered_json json = SweepJson(points, 3);
  EXPECT_THAT(Keys(json), ElementsAre("sweep", "rounds"));
  EXPECT_EQ(json["rounds"], 3);
  ASSERT_EQ(json["sweep"].size(), 2u);
  EXPECT_THAT(Keys(json["sweep"][0]), ElementsAre("iodepth", "connections", "engines"));
  EXPECT_THAT(Keys(json["sweep"][0]["engines"]), ElementsAre("nbdring"));
  EXPECT_EQ(json["sweep"][0]["engines"]["nbdring"]["ios"], 70);
  EXPECT_THAT(Keys(json["sweep"][1]),
              ElementsAre("iodepth", "connections", "engines", "median_ratio"));
  EXPECT_EQ(json["sweep"][1]["iodepth"], 4);
  EXPECT_EQ(json["sweep"][1]["connections"], 2);
  EXPECT_THAT(Keys(json["sweep"][1]["engines"]), ElementsAre("nbdring", "libnbd"));
  EXPECT_EQ(json["sweep"][1]["engines"]["nbdring"]["ios"], 200);
  // The same keys as one run's JSON (report.h).
  EXPECT_EQ(json["sweep"][1]["engines"]["libnbd"],
            RunJson(MakeResult(EngineKind::kLibnbd, 4, 2, 100)));
  EXPECT_DOUBLE_EQ(json["sweep"][1]["median_ratio"]["iops"].get<double>(), 2.0);
}

TEST(SweepTest, TableHasOneRowPerPointAndEngineUnderOneHeader) {
  const std::string table = SweepTable({ComparePoint()});
  const std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << table;
  EXPECT_THAT(lines[0], StartsWith("iodepth conns engine"));
  EXPECT_THAT(lines[0], HasSubstr(TableHeader()));
  EXPECT_THAT(lines[1], StartsWith("      4     2 nbdring"));
  EXPECT_THAT(lines[1], HasSubstr("200"));
  EXPECT_THAT(lines[2], StartsWith("      4     2 libnbd"));
}

}  // namespace
}  // namespace nbdbench
