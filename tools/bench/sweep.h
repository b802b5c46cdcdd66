// tools/bench/sweep.h — the results of a sweep over --iodepth and --connections lists, and
// how they are shown: one table at the end, or one JSON document.
//
// Each combination (a SweepPoint) holds its runs in the order they ran: one run, or with
// --compare nbdring, libnbd, nbdring, ... for --rounds rounds. Where one number per engine is
// needed (the table, the JSON, the plot), it is the engine's median run: the run whose IOPS is
// the median of that engine's runs (the lower middle one for an even count), so every number
// shown comes from one real run.
//
// JSON of a sweep, keys in this order:
//   {"sweep": [{"iodepth": D, "connections": C,
//               "engines": {"nbdring": run, "libnbd": run},  // the engines that ran
//               "median_ratio": {"iops": x, "cpu_us_per_io": y}},  // --compare only
//              ...],                                            // in the order they ran
//    "rounds": N}                                               // runs per engine per point
// where `run` is RunJson's object (report.h), the same keys as a single run's JSON.
#ifndef NBDRING_TOOLS_BENCH_SWEEP_H_
#define NBDRING_TOOLS_BENCH_SWEEP_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tools/bench/report.h"
#include "tools/bench/run.h"

namespace nbdbench {

struct SweepPoint {
  int iodepth = 0;
  int connections = 0;
  std::vector<RunResult> runs;  // in the order they ran
};

// The engines that ran at `point`, in the order of their first run.
std::vector<EngineKind> EnginesRun(const SweepPoint& point);
// The run of `engine` whose IOPS is the median of its runs; null if it did not run.
const RunResult* MedianRun(const SweepPoint& point, EngineKind engine);
// With --compare: consecutive (nbdring, libnbd) pairs of runs.
std::vector<CompareRound> CompareRounds(const SweepPoint& point);

// Per-point runs per engine (--rounds with --compare, else 1).
nlohmann::ordered_json SweepJson(const std::vector<SweepPoint>& points, int rounds);

// The table: iodepth, connections, then report.h's TableHeader/TableRow per engine.
std::string SweepTableHeader();
std::string SweepTableRow(const SweepPoint& point, EngineKind engine, const RunResult& result);
// The whole table, header included, one line per point and engine.
std::string SweepTable(const std::vector<SweepPoint>& points);

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_SWEEP_H_
