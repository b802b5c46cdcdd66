// tools/bench/plot.h — --plot: a sweep drawn by gnuplot into an SVG or PNG file.
//
// Two panels against iodepth (log2 axis): throughput (IOPS, or MiB/s for blocks of 1 MiB and
// more) above, p99 latency in µs below; one line per (connections, engine), each point the
// engine's median run (sweep.h). The data and a gnuplot script go to a private temporary
// directory, gnuplot draws from them, and the directory is removed afterwards.
#ifndef NBDRING_TOOLS_BENCH_PLOT_H_
#define NBDRING_TOOLS_BENCH_PLOT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tools/bench/sweep.h"

namespace nbdbench {

// Whether gnuplot is on PATH and the directory of `output_path` is writable, so that these
// are reported before a long sweep rather than after it. FailedPrecondition naming the
// problem (and how to install gnuplot) when not.
absl::Status CheckPlotPossible(const std::string& output_path);

// The gnuplot script that draws `data_path` (as written by PlotData) into `output_path`,
// whose extension (.svg or .png) picks the terminal.
std::string PlotScript(const std::vector<SweepPoint>& points, absl::string_view data_path,
                       absl::string_view output_path, absl::string_view title);
// One block per (connections, engine) series, blocks separated by two blank lines (gnuplot's
// `index`); each line "iodepth throughput p99_us", sorted by iodepth.
std::string PlotData(const std::vector<SweepPoint>& points);

// Draws `points` into `output_path` (.svg or .png) with gnuplot.
absl::Status WriteSweepPlot(const std::vector<SweepPoint>& points, const std::string& output_path,
                            absl::string_view title);

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_PLOT_H_
