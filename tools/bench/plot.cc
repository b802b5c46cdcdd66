#include "tools/bench/plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

extern char** environ;

namespace nbdbench {
namespace {

constexpr char kInstallHint[] = "install it with `apt-get install gnuplot-nox` (or run tools/setup.sh)";

// One line of the plot: the median runs of one engine at one connection count.
struct Series {
  int connections = 0;
  EngineKind engine = EngineKind::kNbdring;
  std::vector<std::pair<int, const RunResult*>> runs_by_iodepth;
};

std::vector<Series> CollectSeries(const std::vector<SweepPoint>& points) {
  std::vector<Series> all;
  for (const SweepPoint& point : points) {
    for (EngineKind engine : EnginesRun(point)) {
      auto series = std::find_if(all.begin(), all.end(), [&](const Series& s) {
        return s.connections == point.connections && s.engine == engine;
      });
      if (series == all.end()) {
        all.push_back(Series{point.connections, engine, {}});
        series = all.end() - 1;
      }
      series->runs_by_iodepth.emplace_back(point.iodepth, MedianRun(point, engine));
    }
  }
  for (Series& series : all) {
    std::sort(series.runs_by_iodepth.begin(), series.runs_by_iodepth.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  return all;
}

// Blocks of 1 MiB and more are measured in MiB/s, smaller ones in IOPS.
bool ThroughputInMiB(const std::vector<SweepPoint>& points) {
  return !points.empty() && !points.front().runs.empty() &&
         points.front().runs.front().block_size >= (uint64_t{1} << 20);
}

// A gnuplot single-quoted string: a quote inside is written twice.
std::string Quoted(absl::string_view text) {
  return absl::StrCat("'", absl::StrReplaceAll(text, {{"'", "''"}}), "'");
}

absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream file(path);
  file << contents;
  file.close();
  if (!file) return absl::InternalError(absl::StrCat("--plot: cannot write ", path));
  return absl::OkStatus();
}

// Removes the temporary directory however WriteSweepPlot returns.
struct TempDir {
  std::string path;
  ~TempDir() {
    std::error_code ignored;
    if (!path.empty()) std::filesystem::remove_all(path, ignored);
  }
};

}  // namespace

absl::Status CheckPlotPossible(const std::string& output_path) {
  const char* path = std::getenv("PATH");
  bool installed = false;
  for (absl::string_view directory : absl::StrSplit(path != nullptr ? path : "", ':')) {
    if (directory.empty()) continue;
    const std::string candidate = absl::StrCat(directory, "/gnuplot");
    if (access(candidate.c_str(), X_OK) == 0) {
      installed = true;
      break;
    }
  }
  if (!installed) {
    return absl::FailedPreconditionError(
        absl::StrCat("--plot needs gnuplot, which is not installed: ", kInstallHint));
  }
  std::filesystem::path directory = std::filesystem::path(output_path).parent_path();
  if (directory.empty()) directory = ".";
  if (access(directory.c_str(), W_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("--plot=", output_path, ": cannot write in ",
                                                      directory.string(), ": ",
                                                      std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::string PlotData(const std::vector<SweepPoint>& points) {
  const bool in_mib = ThroughputInMiB(points);
  std::string data;
  for (const Series& series : CollectSeries(points)) {
    if (!data.empty()) data += "\n\n";
    absl::StrAppend(&data, "# connections=", series.connections, " engine=",
                    EngineName(series.engine), "\n# iodepth ",
                    in_mib ? "mib_per_s" : "iops", " p99_us\n");
    for (const auto& [iodepth, run] : series.runs_by_iodepth) {
      absl::StrAppendFormat(&data, "%d %.3f %.3f\n", iodepth, in_mib ? run->mib_per_s() : run->iops(),
                            static_cast<double>(run->latency.Percentile(99)) / 1000.0);
    }
  }
  return data;
}

std::string PlotScript(const std::vector<SweepPoint>& points, absl::string_view data_path,
                       absl::string_view output_path, absl::string_view title) {
  const std::vector<Series> all = CollectSeries(points);
  const bool svg = absl::EndsWith(output_path, ".svg");
  std::string script = absl::StrCat(
      svg ? "set terminal svg size 900,900 dynamic noenhanced background rgb 'white' "
            "font 'sans,11'\n"
          : "set terminal pngcairo size 900,900 noenhanced background rgb 'white' "
            "font 'sans,10'\n",
      "set output ", Quoted(output_path), "\n",
      "set multiplot layout 2,1 title ", Quoted(title), "\n",
      "set logscale x 2\n"
      "set grid\n"
      "set key outside right top\n"
      "set xlabel 'iodepth (requests in flight per connection)'\n"
      "set yrange [0:*]\n");
  for (const auto& [column, label] :
       {std::pair<int, std::string>{2, ThroughputInMiB(points) ? "MiB/s" : "IOPS"},
        std::pair<int, std::string>{3, "p99 latency (µs)"}}) {
    absl::StrAppend(&script, "set ylabel ", Quoted(label), "\nplot");
    // One colour per connection count, solid for nbdring and dashed for libnbd.
    std::vector<int> connection_counts;
    for (const Series& series : all) {
      if (std::find(connection_counts.begin(), connection_counts.end(), series.connections) ==
          connection_counts.end()) {
        connection_counts.push_back(series.connections);
      }
    }
    for (size_t i = 0; i < all.size(); ++i) {
      const size_t colour = std::find(connection_counts.begin(), connection_counts.end(),
                                      all[i].connections) -
                            connection_counts.begin() + 1;
      absl::StrAppend(&script, i == 0 ? " " : ", \\\n     ", Quoted(data_path), " index ", i,
                      " using 1:", column, " with linespoints pointtype 7 linewidth 1.5",
                      " linecolor ", colour, " dashtype ",
                      all[i].engine == EngineKind::kNbdring ? 1 : 2, " title ",
                      Quoted(absl::StrCat(EngineName(all[i].engine), ", ", all[i].connections,
                                          all[i].connections == 1 ? " connection"
                                                                  : " connections")));
    }
    script += "\n";
  }
  script += "unset multiplot\n";
  return script;
}

absl::Status WriteSweepPlot(const std::vector<SweepPoint>& points, const std::string& output_path,
                            absl::string_view title) {
  if (points.empty()) return absl::FailedPreconditionError("--plot: no results to draw");
  const char* temp = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(temp != nullptr && *temp != '\0' ? temp : "/tmp",
                                     "/nbd-bench-plot-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(
        absl::StrCat("--plot: cannot create a directory ", pattern, ": ", std::strerror(errno)));
  }
  const TempDir directory{pattern};
  const std::string data_path = absl::StrCat(directory.path, "/sweep.dat");
  const std::string script_path = absl::StrCat(directory.path, "/sweep.gnuplot");
  const std::string log_path = absl::StrCat(directory.path, "/gnuplot.log");
  if (absl::Status written = WriteFile(data_path, PlotData(points)); !written.ok()) return written;
  if (absl::Status written =
          WriteFile(script_path, PlotScript(points, data_path, output_path, title));
      !written.ok()) {
    return written;
  }

  // A stale file from an earlier run must not pass for gnuplot's output.
  unlink(output_path.c_str());
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::string program = "gnuplot";
  std::vector<char*> argv = {program.data(), const_cast<char*>(script_path.c_str()), nullptr};
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned == ENOENT) {
    return absl::FailedPreconditionError(
        absl::StrCat("--plot needs gnuplot, which is not installed: ", kInstallHint));
  }
  if (spawned != 0) {
    return absl::InternalError(absl::StrCat("--plot: cannot run gnuplot: ", std::strerror(spawned)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::ifstream log_file(log_path);
  std::stringstream log;
  log << log_file.rdbuf();
  // gnuplot echoes the offending line and a caret under it, then the error: keep the error.
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(log.str(), '\n', absl::SkipWhitespace())) {
    if (absl::StripAsciiWhitespace(line) == "^") {
      lines.clear();
    } else {
      lines.emplace_back(absl::StripAsciiWhitespace(line));
    }
  }
  const std::string message = absl::StrJoin(lines, "; ");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("--plot=", output_path, ": gnuplot failed",
                                            message.empty() ? "" : ": ", message));
  }
  struct stat written;
  if (stat(output_path.c_str(), &written) != 0 || written.st_size == 0) {
    return absl::InternalError(absl::StrCat("--plot=", output_path,
                                            ": gnuplot wrote nothing there",
                                            message.empty() ? "" : ": ", message));
  }
  return absl::OkStatus();
}

}  // namespace nbdbench
