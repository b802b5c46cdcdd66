#include "tools/bench/sweep.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace nbdbench {

std::vector<EngineKind> EnginesRun(const SweepPoint& point) {
  std::vector<EngineKind> engines;
  for (const RunResult& run : point.runs) {
    if (std::find(engines.begin(), engines.end(), run.engine) == engines.end()) {
      engines.push_back(run.engine);
    }
  }
  return engines;
}

const RunResult* MedianRun(const SweepPoint& point, EngineKind engine) {
  std::vector<const RunResult*> runs;
  for (const RunResult& run : point.runs) {
    if (run.engine == engine) runs.push_back(&run);
  }
  if (runs.empty()) return nullptr;
  std::sort(runs.begin(), runs.end(),
            [](const RunResult* a, const RunResult* b) { return a->iops() < b->iops(); });
  return runs[(runs.size() - 1) / 2];
}

std::vector<CompareRound> CompareRounds(const SweepPoint& point) {
  std::vector<CompareRound> rounds;
  for (size_t i = 0; i + 1 < point.runs.size(); i += 2) {
    if (point.runs[i].engine == EngineKind::kNbdring &&
        point.runs[i + 1].engine == EngineKind::kLibnbd) {
      rounds.push_back(CompareRound{point.runs[i], point.runs[i + 1]});
    }
  }
  return rounds;
}

nlohmann::ordered_json SweepJson(const std::vector<SweepPoint>& points, int rounds) {
  nlohmann::ordered_json json;
  json["sweep"] = nlohmann::ordered_json::array();
  for (const SweepPoint& point : points) {
    nlohmann::ordered_json entry;
    entry["iodepth"] = point.iodepth;
    entry["connections"] = point.connections;
    entry["engines"] = nlohmann::ordered_json::object();
    for (EngineKind engine : EnginesRun(point)) {
      entry["engines"][EngineName(engine)] = RunJson(*MedianRun(point, engine));
    }
    if (const std::vector<CompareRound> compared = CompareRounds(point); !compared.empty()) {
      const MedianRatios ratios = ComputeMedianRatios(compared);
      entry["median_ratio"] = {{"iops", ratios.iops}, {"cpu_us_per_io", ratios.cpu_us_per_io}};
    }
    json["sweep"].push_back(std::move(entry));
  }
  json["rounds"] = rounds;
  return json;
}

std::string SweepTableHeader() {
  return absl::StrFormat("%7s %5s %s", "iodepth", "conns", TableHeader());
}

std::string SweepTableRow(const SweepPoint& point, EngineKind engine, const RunResult& result) {
  return absl::StrFormat("%7d %5d %s", point.iodepth, point.connections,
                         TableRow(EngineName(engine), result));
}

std::string SweepTable(const std::vector<SweepPoint>& points) {
  std::string table = absl::StrCat(SweepTableHeader(), "\n");
  for (const SweepPoint& point : points) {
    for (EngineKind engine : EnginesRun(point)) {
      absl::StrAppend(&table, SweepTableRow(point, engine, *MedianRun(point, engine)), "\n");
    }
  }
  return table;
}

}  // namespace nbdbench
