// tools/bench/report.h — how results are shown: a human table, or JSON on stdout.
//
// JSON of one run has exactly these keys, in this order: engine, rw, bs, iodepth, connections,
// threads, ios, seconds, iops, mib_per_s, lat_us {p50, p90, p99, p999, max}, cpu_us_per_io,
// cpu_percent, enters_per_io and sqes_per_enter (both null for engines without io_uring),
// connection_iops {min, median, max} (IOPS of the least, median and most served connection;
// null when unknown), and "interrupted": true / "notes": [...] only when they apply. --compare prints
// {"rounds": [{"nbdring": run, "libnbd": run}, ...],
//  "median_ratio": {"iops": x, "cpu_us_per_io": y}} with ratios nbdring / libnbd.
#ifndef NBDRING_TOOLS_BENCH_REPORT_H_
#define NBDRING_TOOLS_BENCH_REPORT_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "tools/bench/run.h"

namespace nbdbench {

struct CompareRound {
  RunResult nbdring;
  RunResult libnbd;
};

struct MedianRatios {
  double iops = 0;
  double cpu_us_per_io = 0;
};

// The median over rounds of nbdring/libnbd for IOPS and for CPU-µs per I/O (rounds where the
// libnbd value is zero are skipped).
MedianRatios ComputeMedianRatios(const std::vector<CompareRound>& rounds);
// The median of `values` (the mean of the middle two for an even count); 0 when empty.
double Median(std::vector<double> values);

nlohmann::ordered_json RunJson(const RunResult& result);
nlohmann::ordered_json CompareJson(const std::vector<CompareRound>& rounds);

// One line naming the workload and the target, printed above the table.
std::string WorkloadLine(const RunSpec& spec, absl::string_view target);
// The same for a sweep: the lists of iodepths and connection counts instead of spec's values.
// An empty target leaves it out.
std::string SweepWorkloadLine(const RunSpec& spec, const std::vector<int>& iodepths,
                              const std::vector<int>& connection_counts,
                              absl::string_view target);
std::string TableHeader();
std::string TableRow(absl::string_view label, const RunResult& result);
// --histogram: one line per power of two of microseconds that holds any latency:
// "  [   64,   128) µs  12345  38.2 %  cumulative  61.0 %  ########".
std::string HistogramLines(const LatencyHistogram& histogram);
// Under a row of a run with several connections: how evenly they were served ("" otherwise).
std::string SpreadLine(const RunResult& result);
// The closing lines of --compare: the median ratios.
std::string CompareSummary(const std::vector<CompareRound>& rounds);

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_REPORT_H_
