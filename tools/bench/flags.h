// tools/bench/flags.h — nbd-bench's command line: fio's vocabulary as Abseil flags, plus an
// optional NBD URI.
//
// The flags are ordinary ABSL_FLAGs (typed values, defaults and help in one place), but the
// argument loop is ours so that every usage error — an unknown flag, a value that does not
// parse, values that contradict each other — comes back as one InvalidArgumentError line for
// main to print with exit status 2, instead of Abseil's own report and exit(1).
#ifndef NBDRING_TOOLS_BENCH_FLAGS_H_
#define NBDRING_TOOLS_BENCH_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tools/bench/run.h"
#include "tools/bench/workload.h"

namespace nbdbench {

struct BenchOptions {
  bool help = false;
  std::string uri;  // empty: start the embedded nbdkit server
  ReadWrite rw = ReadWrite::kRandRead;
  int read_percent = 70;
  uint64_t block_size = 4096;
  // --iodepth and --connections take comma lists; every combination is run. iodepth and
  // connections are the first values (the only ones unless it is a sweep).
  int iodepth = 16;
  int connections = 1;
  std::vector<int> iodepths = {16};
  std::vector<int> connection_counts = {1};
  int threads = 1;
  int clients = 1;  // each with `connections`; nbdring's share one Runtime
  // nbdring's ClientOptions::inflight_limit: -1 follows --iodepth (the limit is the depth the
  // benchmark keeps outstanding), 0 is "auto", N a fixed limit below or above the depth.
  int inflight_limit = -1;
  absl::Duration runtime = absl::Seconds(5);  // zero: no time limit (size_limit is then set)
  absl::Duration ramp = absl::Seconds(1);
  uint64_t size_limit = 0;  // zero: none
  uint64_t offset = 0;
  uint64_t range = 0;  // zero: from offset to the end of the export
  bool verify = false;
  EngineKind engine = EngineKind::kNbdring;
  bool compare = false;
  int rounds = 3;
  bool json = false;
  bool histogram = false;  // print each run's latency histogram (human output only)
  std::vector<int> cpus;
  absl::Duration batch_delay = absl::Microseconds(50);  // nbdring's completion batching
  bool polled = false;  // nbdring in caller-driven mode (see RunSpec::polled)
  bool prefill = false;  // external servers; the embedded one is always prefilled for reads
  std::string plot_path;  // --plot: .svg or .png; empty: no plot

  // More than one combination of iodepth and connections, or a plot: one table at the end.
  bool sweep() const {
    return iodepths.size() > 1 || connection_counts.size() > 1 || !plot_path.empty();
  }
};

// Parses the arguments that follow the program name. Flags are --name=value or --name value;
// boolean flags also take --name and --noname. At most one positional argument: the URI.
absl::StatusOr<BenchOptions> ParseCommandLine(const std::vector<std::string>& arguments);

// The --help text: usage, every flag with its default, and examples.
std::string HelpText();

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_FLAGS_H_
