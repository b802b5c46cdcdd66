// nbd-bench: measures an NBD export through nbdring, or through libnbd for comparison.
// See HelpText() in flags.cc for the command line; tools/bench/*.h for the pieces.
//
// Exit status: 0 success; 1 failure (connection, I/O error, verify mismatch, an export that
// cannot take the workload); 2 usage error; 128+N when signal N ended the run (the results
// measured until then are still printed).
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nbdring/client.h"
#include "tools/bench/embedded_server.h"
#include "tools/bench/flags.h"
#include "tools/bench/libnbd_engine.h"
#include "tools/bench/nbdring_engine.h"
#include "tools/bench/plot.h"
#include "tools/common/command_line.h"
#include "tools/bench/report.h"
#include "tools/bench/run.h"
#include "tools/bench/sweep.h"

namespace nbdbench {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

RunControl& Control() {
  static RunControl* control = new RunControl();  // never destroyed: the signal thread uses it
  return *control;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "nbd-bench: %s\n", std::string(status.message()).c_str());
  return kExitFailure;
}

int UsageFailure(absl::string_view message) {
  std::fprintf(stderr, "nbd-bench: %s\n", std::string(message).c_str());
  return kExitUsage;
}

// SIGINT/SIGTERM are blocked in every thread (threads inherit the mask) and taken here with
// sigwait, so no code runs in signal context. The first ends the run cleanly; a second one
// quits at once (the embedded server follows through --exit-with-parent).
void StartSignalThread() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals] {
    while (true) {
      int signal_number = 0;
      if (sigwait(&signals, &signal_number) != 0) continue;
      if (Control().interrupted()) _exit(128 + signal_number);
      Control().Interrupt(signal_number);
      static constexpr char kMessage[] =
          "\nnbd-bench: interrupted: finishing the run (interrupt again to quit at once)\n";
      (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    }
  }).detach();
}

void Note(absl::string_view message) {
  std::fprintf(stderr, "nbd-bench: %s\n", std::string(message).c_str());
}

// Checks the workload against what the export can take and fills in the region. Errors here
// depend on the server, so they are failures (1), not usage errors.
absl::StatusOr<RunSpec> MakeRunSpec(const BenchOptions& options, const nbd::ExportInfo& info,
                                    const std::string& uri) {
  RunSpec spec;
  spec.uri = uri;
  spec.rw = options.rw;
  spec.read_percent = options.read_percent;
  spec.block_size = options.block_size;
  spec.iodepth = options.iodepth;
  spec.connections = options.connections;
  spec.threads = options.threads;
  spec.clients = options.clients;
  spec.ramp = options.ramp;
  spec.runtime = options.runtime;
  spec.size_limit = options.size_limit;
  spec.verify = options.verify;
  spec.cpus = options.cpus;
  spec.batch_delay = options.batch_delay;
  spec.polled = options.polled;
  spec.inflight_limit = options.inflight_limit;
  spec.live_status = !options.json && isatty(STDOUT_FILENO);

  if (options.offset >= info.size) {
    return absl::OutOfRangeError(absl::StrCat("--offset=", options.offset,
                                              " is not inside the export (", info.size, " bytes)"));
  }
  spec.region_offset = options.offset;
  spec.region_length = options.range != 0 ? options.range : info.size - options.offset;
  if (spec.region_length > info.size - spec.region_offset) {
    return absl::OutOfRangeError(
        absl::StrCat("--offset=", spec.region_offset, " plus --range=", spec.region_length,
                     " goes past the end of the export (", info.size, " bytes)"));
  }
  if (spec.block_size > spec.region_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bs=", spec.block_size, " is larger than the region used (",
                     spec.region_length, " bytes at offset ", spec.region_offset, ")"));
  }
  if (info.read_only() && (WritesData(spec.rw) || spec.verify)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the export is read-only, but ", spec.verify ? "--verify" : "--rw=",
                     spec.verify ? "" : ReadWriteName(spec.rw), " writes to it"));
  }
  const nbd::BlockSizeConstraints& limits = info.block_size;
  if (spec.block_size > limits.maximum) {
    return absl::InvalidArgumentError(absl::StrCat("--bs=", spec.block_size,
                                                   " is larger than the export's maximum "
                                                   "request size (",
                                                   limits.maximum, " bytes)"));
  }
  const uint64_t minimum = limits.minimum == 0 ? 1 : limits.minimum;
  for (const auto& [name, value] : {std::pair<const char*, uint64_t>{"--bs", spec.block_size},
                                    {"--offset", spec.region_offset},
                                    {"--range", spec.region_length}}) {
    if (value % minimum != 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, "=", value,
                                                     " is not a multiple of the export's "
                                                     "minimum block size (",
                                                     minimum, " bytes)"));
    }
  }
  return spec;
}

absl::StatusOr<RunResult> RunEngine(EngineKind engine, const RunSpec& spec) {
  return engine == EngineKind::kNbdring ? RunNbdring(spec, Control()) : RunLibnbd(spec, Control());
}

// Runs `engine` once and shows its notes (each only the first time).
absl::StatusOr<RunResult> RunShowingNotes(EngineKind engine, const RunSpec& spec,
                                          std::set<std::string>& notes_shown) {
  absl::StatusOr<RunResult> result = RunEngine(engine, spec);
  if (!result.ok()) return result.status();
  for (const std::string& note : result->notes) {
    if (notes_shown.insert(note).second) Note(note);
  }
  return result;
}

// --verify: reads the region back after a run. An interrupt during the check is no failure.
absl::Status CheckRegionAfterRun(const RunSpec& spec, bool chatty) {
  if (!spec.verify || Control().interrupted()) return absl::OkStatus();
  absl::Status checked =
      CheckPattern(spec.uri, spec.region_offset, spec.region_length, spec.connections, Control());
  if (!checked.ok() && !Control().interrupted()) return checked;
  if (checked.ok() && chatty) {
    Note(absl::StrCat("verify: read back ", spec.region_length, " bytes at offset ",
                      spec.region_offset, ": every byte matches"));
  }
  return absl::OkStatus();
}

// --iodepth and --connections lists (or --plot): every combination, connections in the outer
// loop, each running the engines in `order`; one table or JSON document at the end, then the
// plot. An interrupt ends the sweep and shows what was measured.
int RunSweep(const BenchOptions& options, RunSpec spec, const std::vector<EngineKind>& order,
             const std::string& target, bool chatty) {
  if (!options.json) {
    std::printf("%s\n",
                SweepWorkloadLine(spec, options.iodepths, options.connection_counts, target)
                    .c_str());
    std::fflush(stdout);
  }
  const size_t combinations = options.iodepths.size() * options.connection_counts.size();
  std::vector<SweepPoint> points;
  std::set<std::string> notes_shown;
  for (int connections : options.connection_counts) {
    for (int iodepth : options.iodepths) {
      if (Control().interrupted()) break;
      spec.iodepth = iodepth;
      spec.connections = connections;
      if (chatty) {
        Note(absl::StrCat("sweep ", points.size() + 1, "/", combinations, ": iodepth=", iodepth,
                          " connections=", connections));
      }
      SweepPoint point{iodepth, connections, {}};
      for (size_t i = 0; i < order.size() && !Control().interrupted(); ++i) {
        absl::StatusOr<RunResult> result = RunShowingNotes(order[i], spec, notes_shown);
        if (!result.ok()) return Fail(result.status());
        point.runs.push_back(*std::move(result));
        if (absl::Status checked = CheckRegionAfterRun(spec, chatty); !checked.ok()) {
          return Fail(checked);
        }
      }
      if (!point.runs.empty()) points.push_back(std::move(point));
    }
  }

  if (options.json) {
    std::printf("%s\n", SweepJson(points, options.compare ? options.rounds : 1).dump(2).c_str());
  } else {
    std::printf("%s", SweepTable(points).c_str());
  }
  std::fflush(stdout);
  if (!options.plot_path.empty() && !points.empty()) {
    const std::string title =
        SweepWorkloadLine(spec, options.iodepths, options.connection_counts, "");
    if (absl::Status drawn = WriteSweepPlot(points, options.plot_path, title); !drawn.ok()) {
      return Fail(drawn);
    }
    if (chatty) Note(absl::StrCat("plot written to ", options.plot_path));
  }
  if (Control().interrupted()) return 128 + Control().interrupt_signal();
  return 0;
}

// Sharing cores, nbdkit and the client disturb each other by 15-100 % from run to run, and
// which client wins depends on it (docs/performance.md). With the embedded server and no
// --cpus, nbdkit gets the first CPU this process may use and the client the others.
void PinEmbeddedServer(EmbeddedServer& server, RunSpec* spec) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0 || CPU_COUNT(&allowed) < 2) return;
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &allowed)) cpus.push_back(cpu);
  }
  if (absl::Status pinned = server.PinTo(cpus.front()); !pinned.ok()) {
    Note(absl::StrCat("running unpinned: ", pinned.message()));
    return;
  }
  spec->cpus.assign(cpus.begin() + 1, cpus.end());
  Note(absl::StrCat("embedded nbdkit pinned to CPU ", cpus.front(), ", nbd-bench to CPU",
                    spec->cpus.size() > 1 ? "s " : " ", absl::StrJoin(spec->cpus, ","),
                    " (--cpus to choose)"));
}

int Main(const std::vector<std::string>& arguments) {
  StartSignalThread();
  // A server that goes away must show up as an I/O error with a message, not kill us.
  signal(SIGPIPE, SIG_IGN);
  if (std::find(arguments.begin(), arguments.end(), "--version") != arguments.end()) {
    std::printf("nbd-bench (nbdring) %s\n", nbdtools::kNbdringVersion);
    return 0;
  }
  absl::StatusOr<BenchOptions> parsed = ParseCommandLine(arguments);
  if (!parsed.ok()) return UsageFailure(parsed.status().message());
  const BenchOptions& options = *parsed;
  if (options.help) {
    std::fputs(HelpText().c_str(), stdout);
    return 0;
  }
  const bool chatty = isatty(STDERR_FILENO);
  if (!options.plot_path.empty()) {
    if (absl::Status possible = CheckPlotPossible(options.plot_path); !possible.ok()) {
      return Fail(possible);
    }
  }

  std::unique_ptr<EmbeddedServer> server;
  std::string uri = options.uri;
  if (uri.empty()) {
    absl::StatusOr<std::unique_ptr<EmbeddedServer>> started =
        EmbeddedServer::Start({"memory", "1G"});
    if (!started.ok()) return Fail(started.status());
    server = *std::move(started);
    uri = server->uri();
  }
  const std::string target = server ? absl::StrCat(server->description(), " at ", uri) : uri;

  nbdring::ClientOptions query_options;
  query_options.uri = uri;
  absl::StatusOr<nbdring::ExportQuery> query = nbdring::QueryExport(query_options);
  if (!query.ok()) {
    return Fail(absl::Status(query.status().code(),
                             absl::StrCat("cannot use ", uri, ": ", query.status().message())));
  }
  absl::StatusOr<RunSpec> made = MakeRunSpec(options, query->info, uri);
  if (!made.ok()) return Fail(made.status());
  RunSpec spec = *std::move(made);
  if (server != nullptr && spec.cpus.empty()) PinEmbeddedServer(*server, &spec);

  // Pinned only now, so the embedded server is not; every thread started from here on
  // inherits the set, and each I/O thread then takes one CPU of it.
  if (!spec.cpus.empty()) {
    if (absl::Status pinned = PinCurrentThread(spec.cpus); !pinned.ok()) {
      return UsageFailure(absl::StrCat("--cpus: ", pinned.message()));
    }
  }

  bool prefill = spec.verify || (ReadsData(spec.rw) && (server != nullptr || options.prefill));
  if (prefill && query->info.read_only()) {
    Note("the export is read-only: reading it as it is, without writing the pattern first");
    prefill = false;
  }
  if (prefill) {
    if (chatty) {
      Note(absl::StrCat("writing the pattern over ", spec.region_length >> 20, " MiB at offset ",
                        spec.region_offset, " before the run"));
    }
    absl::Status written =
        WritePattern(uri, spec.region_offset, spec.region_length, spec.connections, Control());
    if (Control().interrupted()) return 128 + Control().interrupt_signal();
    if (!written.ok()) return Fail(written);
  }

  std::vector<EngineKind> order;
  if (options.compare) {
    for (int round = 0; round < options.rounds; ++round) {
      order.push_back(EngineKind::kNbdring);
      order.push_back(EngineKind::kLibnbd);
    }
  } else {
    order.push_back(options.engine);
  }
  if (options.sweep()) return RunSweep(options, spec, order, target, chatty);

  if (!options.json) {
    std::printf("%s\n%s\n", WorkloadLine(spec, target).c_str(), TableHeader().c_str());
    std::fflush(stdout);
  }
  std::vector<RunResult> results;
  std::set<std::string> notes_shown;
  for (size_t i = 0; i < order.size() && !Control().interrupted(); ++i) {
    absl::StatusOr<RunResult> result = RunShowingNotes(order[i], spec, notes_shown);
    if (!result.ok()) return Fail(result.status());
    if (!options.json) {
      const std::string label = options.compare
                                    ? absl::StrCat("#", i / 2 + 1, " ", EngineName(order[i]))
                                    : EngineName(order[i]);
      std::printf("%s\n", TableRow(label, *result).c_str());
      if (const std::string spread = SpreadLine(*result); !spread.empty()) {
        std::printf("%s\n", spread.c_str());
      }
      if (options.histogram) std::printf("%s", HistogramLines(result->latency).c_str());
      std::fflush(stdout);
    }
    results.push_back(*std::move(result));
    if (absl::Status checked = CheckRegionAfterRun(spec, chatty); !checked.ok()) {
      return Fail(checked);
    }
  }

  std::vector<CompareRound> rounds;
  for (size_t i = 0; options.compare && i + 1 < results.size(); i += 2) {
    rounds.push_back(CompareRound{results[i], results[i + 1]});
  }
  if (options.json) {
    if (options.compare) {
      const nlohmann::ordered_json json = CompareJson(rounds);
      std::printf("%s\n", json.dump(2).c_str());
    } else if (!results.empty()) {
      std::printf("%s\n", RunJson(results.front()).dump(2).c_str());
    }
  } else if (options.compare && !rounds.empty()) {
    std::printf("%s\n", CompareSummary(rounds).c_str());
  }
  std::fflush(stdout);
  if (Control().interrupted()) return 128 + Control().interrupt_signal();
  return 0;
}

}  // namespace
}  // namespace nbdbench

int main(int argc, char** argv) {
  std::vector<std::string> arguments(argv + 1, argv + argc);
  return nbdbench::Main(arguments);
}
