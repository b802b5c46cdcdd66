#include "tools/bench/flags.h"

#include <algorithm>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

ABSL_FLAG(std::string, rw, "randread", "randread, randwrite, read, write or randrw");
ABSL_FLAG(int, rwmixread, 70, "randrw: percentage of I/Os that are reads");
ABSL_FLAG(std::string, bs, "4k", "block size: bytes, or with a k/m/g suffix");
ABSL_FLAG(std::string, iodepth, "16",
          "requests in flight per connection; a comma list such as 1,4,16,64 sweeps, running "
          "every combination with --connections and printing one table at the end");
ABSL_FLAG(std::string, connections, "1",
          "connections to the server (more than one needs NBD_FLAG_CAN_MULTI_CONN); a comma "
          "list such as 1,2,4 sweeps");
ABSL_FLAG(std::string, inflight_limit, "",
          "nbdring: requests each connection may have in flight (ClientOptions::"
          "inflight_limit): a number from 1 to 65536, or auto (each connection adapts its own, "
          "up to 256); --iodepth stays the number the benchmark keeps outstanding, and "
          "requests over the limit wait in the client (default: the --iodepth value)");
ABSL_FLAG(int, clients, 1,
          "clients, each with --connections connections to the URI (many volumes on one "
          "node): nbdring's share one runtime of --threads ring threads (nbdring::Runtime); "
          "libnbd opens as many handles. Runs report the spread of per-connection IOPS");
ABSL_FLAG(int, threads, 1,
          "nbdring: ring threads; libnbd: poll-loop threads the handles are spread over");
ABSL_FLAG(absl::Duration, runtime, absl::Seconds(5),
          "length of the measured window, e.g. 5s or 500ms; 0 = until --size is reached");
ABSL_FLAG(std::string, size, "0",
          "stop after this many bytes were transferred in the window (0 = no limit); "
          "whichever of --runtime and --size comes first ends the run");
ABSL_FLAG(absl::Duration, ramp, absl::Seconds(1), "warm-up before the window, not counted");
ABSL_FLAG(std::string, offset, "0", "start of the region of the export used");
ABSL_FLAG(std::string, range, "",
          "length of the region used (default: from --offset to the end of the export)");
ABSL_FLAG(bool, verify, false,
          "write a pattern derived from each byte's offset over the region, check every "
          "read against it during the run, and read the whole region back afterwards; "
          "any mismatch fails the run naming the offset");
ABSL_FLAG(std::string, engine, "nbdring", "nbdring or libnbd");
ABSL_FLAG(bool, compare, false,
          "run both engines alternately (nbdring, libnbd, nbdring, ...) for --rounds rounds "
          "and report the median nbdring/libnbd ratios");
ABSL_FLAG(int, rounds, 3, "--compare: rounds");
ABSL_FLAG(bool, json, false, "print the results as JSON on stdout");
ABSL_FLAG(bool, histogram, false,
          "under each run, print its latency histogram: one line per power of two of "
          "microseconds, with the count, the share and the cumulative share");
ABSL_FLAG(std::string, cpus, "",
          "pin the client's threads to these CPUs, e.g. 1 or 0,1 or 0-3 (sched_setaffinity); "
          "`taskset -c 1 nbd-bench ...` pins the whole process instead");
ABSL_FLAG(absl::Duration, batch_delay, absl::Microseconds(50),
          "nbdring: how long a ring with many requests in flight may wait for more replies "
          "before waking (ClientOptions::completion_batch_delay); 0 wakes on every reply");
ABSL_FLAG(bool, polled, false,
          "nbdring: caller-driven mode (ClientOptions::threads = 0): one thread of the "
          "benchmark's own turns the client with Client::Poll, the library starts none; "
          "--threads is then ignored");
ABSL_FLAG(bool, prefill, false,
          "write the region before a read workload so reads do not hit never-written areas "
          "(always done for the embedded server; destroys the data of an external export)");
ABSL_FLAG(std::string, plot, "",
          "draw throughput and p99 latency against iodepth, one line per connection count "
          "and engine, into this .svg or .png file (needs gnuplot: apt-get install "
          "gnuplot-nox)");

namespace nbdbench {
namespace {

// The flags in the order --help lists them.
constexpr const char* kFlagOrder[] = {
    "rw",      "rwmixread", "bs",     "iodepth", "inflight_limit", "connections", "clients", "threads",
    "runtime", "size",      "ramp",   "offset",  "range",       "verify",
    "engine",  "compare",   "rounds", "json",    "histogram",   "plot",        "cpus",
    "prefill", "batch_delay", "polled",
};

absl::CommandLineFlag* FindBenchFlag(absl::string_view name) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  // Only ours: libraries linked in may define flags of their own.
  if (flag == nullptr || !absl::EndsWith(flag->Filename(), "tools/bench/flags.cc")) {
    return nullptr;
  }
  return flag;
}

absl::Status UsageError(absl::string_view message) { return absl::InvalidArgumentError(message); }

absl::StatusOr<uint64_t> SizeFlag(absl::string_view name, const std::string& value) {
  absl::StatusOr<uint64_t> size = ParseByteSize(value);
  if (!size.ok()) return UsageError(absl::StrCat("--", name, ": ", size.status().message()));
  return size;
}

// A comma list of distinct whole numbers in [minimum, maximum], e.g. --iodepth=1,4,16. Errors
// name the flag, the list and the bad value; a single value keeps the one-value messages.
absl::StatusOr<std::vector<int>> IntListFlag(absl::string_view name, const std::string& text,
                                             int minimum, int maximum) {
  std::vector<int> values;
  const std::vector<absl::string_view> parts = absl::StrSplit(text, ',');
  for (absl::string_view part : parts) {
    int value = 0;
    if (!absl::SimpleAtoi(part, &value)) {
      return UsageError(absl::StrCat("--", name, "=", text, ": \"", part,
                                     "\" is not a whole number",
                                     parts.size() > 1 ? " (give a comma list such as 1,4,16)" : ""));
    }
    if (value < minimum || value > maximum) {
      return UsageError(absl::StrCat("--", name, "=", text,
                                     parts.size() > 1 ? absl::StrCat(": ", value) : "",
                                     " is out of range [", minimum, ", ", maximum, "]"));
    }
    if (std::find(values.begin(), values.end(), value) != values.end()) {
      return UsageError(absl::StrCat("--", name, "=", text, ": ", value, " is given twice"));
    }
    values.push_back(value);
  }
  return values;
}

absl::Status SetFlags(const std::vector<std::string>& arguments, BenchOptions& options) {
  bool flags_done = false;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const std::string& argument = arguments[i];
    if (flags_done || argument.size() < 2 || argument[0] != '-') {
      if (!options.uri.empty()) {
        return UsageError(
            absl::StrCat("more than one URI given: \"", options.uri, "\" and \"", argument, "\""));
      }
      options.uri = argument;
      continue;
    }
    if (argument == "--") {
      flags_done = true;
      continue;
    }
    absl::string_view text = argument;
    text.remove_prefix(absl::StartsWith(text, "--") ? 2 : 1);
    if (text == "help" || text == "h" || text == "helpfull") {
      options.help = true;
      continue;
    }
    const size_t equals = text.find('=');
    const absl::string_view name = text.substr(0, equals);
    std::string value;
    absl::CommandLineFlag* flag = FindBenchFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no") && equals == absl::string_view::npos) {
      flag = FindBenchFlag(name.substr(2));
      if (flag != nullptr && !flag->IsOfType<bool>()) flag = nullptr;
      value = "false";
    } else if (flag != nullptr && equals != absl::string_view::npos) {
      value = std::string(text.substr(equals + 1));
    } else if (flag != nullptr && flag->IsOfType<bool>()) {
      value = "true";
    } else if (flag != nullptr) {
      if (i + 1 >= arguments.size()) {
        return UsageError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = arguments[++i];
    }
    if (flag == nullptr) {
      return UsageError(absl::StrCat("unknown flag \"", argument, "\" (see --help)"));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return UsageError(absl::StrCat("--", name, "=", value, ": ", error));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BenchOptions> ParseCommandLine(const std::vector<std::string>& arguments) {
  BenchOptions options;
  if (absl::Status status = SetFlags(arguments, options); !status.ok()) return status;
  if (options.help) return options;

  absl::StatusOr<ReadWrite> rw = ParseReadWrite(absl::GetFlag(FLAGS_rw));
  if (!rw.ok()) return UsageError(rw.status().message());
  options.rw = *rw;

  absl::StatusOr<uint64_t> block_size = SizeFlag("bs", absl::GetFlag(FLAGS_bs));
  if (!block_size.ok()) return block_size.status();
  if (*block_size == 0) return UsageError("--bs must be at least 1 byte");
  if (*block_size > (uint64_t{1} << 31)) {
    return UsageError(absl::StrCat("--bs=", absl::GetFlag(FLAGS_bs), " is over 2 GiB"));
  }
  options.block_size = *block_size;

  absl::StatusOr<uint64_t> size_limit = SizeFlag("size", absl::GetFlag(FLAGS_size));
  if (!size_limit.ok()) return size_limit.status();
  options.size_limit = *size_limit;
  absl::StatusOr<uint64_t> offset = SizeFlag("offset", absl::GetFlag(FLAGS_offset));
  if (!offset.ok()) return offset.status();
  options.offset = *offset;
  if (const std::string range = absl::GetFlag(FLAGS_range); !range.empty()) {
    absl::StatusOr<uint64_t> length = SizeFlag("range", range);
    if (!length.ok()) return length.status();
    options.range = *length;
  }

  struct Bounded {
    const char* name;
    int value;
    int minimum;
    int maximum;
  };
  const Bounded bounded[] = {
      {"rwmixread", absl::GetFlag(FLAGS_rwmixread), 0, 100},
      {"threads", absl::GetFlag(FLAGS_threads), 1, 256},
      {"clients", absl::GetFlag(FLAGS_clients), 1, 1024},
      {"rounds", absl::GetFlag(FLAGS_rounds), 1, 1000},
  };
  for (const Bounded& flag : bounded) {
    if (flag.value < flag.minimum || flag.value > flag.maximum) {
      return UsageError(absl::StrCat("--", flag.name, "=", flag.value, " is out of range [",
                                     flag.minimum, ", ", flag.maximum, "]"));
    }
  }
  options.read_percent = absl::GetFlag(FLAGS_rwmixread);
  absl::StatusOr<std::vector<int>> iodepths =
      IntListFlag("iodepth", absl::GetFlag(FLAGS_iodepth), 1, 65536);
  if (!iodepths.ok()) return iodepths.status();
  options.iodepths = *std::move(iodepths);
  options.iodepth = options.iodepths.front();
  absl::StatusOr<std::vector<int>> connection_counts =
      IntListFlag("connections", absl::GetFlag(FLAGS_connections), 1, 256);
  if (!connection_counts.ok()) return connection_counts.status();
  options.connection_counts = *std::move(connection_counts);
  options.connections = options.connection_counts.front();
  if (const std::string limit = absl::GetFlag(FLAGS_inflight_limit); !limit.empty()) {
    int value = 0;
    if (limit == "auto") {
      options.inflight_limit = 0;
    } else if (absl::SimpleAtoi(limit, &value) && value >= 0 && value <= 65536) {
      options.inflight_limit = value;  // 0 is auto too, as in ClientOptions
    } else {
      return UsageError(absl::StrCat("--inflight_limit=", limit,
                                     ": give a number from 1 to 65536, or auto"));
    }
  }
  options.threads = absl::GetFlag(FLAGS_threads);
  options.clients = absl::GetFlag(FLAGS_clients);
  if (options.clients > 1 && absl::GetFlag(FLAGS_polled)) {
    return UsageError("--polled drives one client; it does not combine with --clients");
  }
  options.rounds = absl::GetFlag(FLAGS_rounds);

  options.runtime = absl::GetFlag(FLAGS_runtime);
  options.ramp = absl::GetFlag(FLAGS_ramp);
  if (options.runtime < absl::ZeroDuration() || options.ramp < absl::ZeroDuration()) {
    return UsageError("--runtime and --ramp must not be negative");
  }
  if (options.runtime == absl::ZeroDuration() && options.size_limit == 0) {
    return UsageError("--runtime=0 means \"until --size is reached\", but --size is not set");
  }

  const std::string engine = absl::GetFlag(FLAGS_engine);
  if (engine == "nbdring") {
    options.engine = EngineKind::kNbdring;
  } else if (engine == "libnbd") {
    options.engine = EngineKind::kLibnbd;
  } else {
    return UsageError(absl::StrCat("--engine must be nbdring or libnbd, got \"", engine, "\""));
  }
  options.compare = absl::GetFlag(FLAGS_compare);
  options.verify = absl::GetFlag(FLAGS_verify);
  options.json = absl::GetFlag(FLAGS_json);
  options.histogram = absl::GetFlag(FLAGS_histogram);
  options.prefill = absl::GetFlag(FLAGS_prefill);
  options.batch_delay = absl::GetFlag(FLAGS_batch_delay);
  options.polled = absl::GetFlag(FLAGS_polled);
  if (options.batch_delay < absl::ZeroDuration()) {
    return UsageError("--batch_delay must not be negative");
  }

  options.plot_path = absl::GetFlag(FLAGS_plot);
  if (!options.plot_path.empty() && !absl::EndsWith(options.plot_path, ".svg") &&
      !absl::EndsWith(options.plot_path, ".png")) {
    return UsageError(absl::StrCat("--plot=", options.plot_path,
                                   ": the file name must end in .svg or .png"));
  }

  if (const std::string cpus = absl::GetFlag(FLAGS_cpus); !cpus.empty()) {
    absl::StatusOr<std::vector<int>> list = ParseCpuList(cpus);
    if (!list.ok()) return UsageError(list.status().message());
    options.cpus = *std::move(list);
  }
  return options;
}

std::string HelpText() {
  std::string text =
      "Usage: nbd-bench [URI] [flags]\n"
      "\n"
      "Measures an NBD export with nbdring (or libnbd, for comparison) using fio's\n"
      "vocabulary. URI is nbd://host[:port]/export or nbd+unix:///export?socket=PATH; without\n"
      "one, nbd-bench starts `nbdkit memory 1G` on a private Unix socket and stops it at exit.\n"
      "\n"
      "Flags:\n";
  for (const char* name : kFlagOrder) {
    const absl::CommandLineFlag* flag = FindBenchFlag(name);
    if (flag == nullptr) continue;
    std::string description = flag->Help();
    if (!flag->DefaultValue().empty()) {
      absl::StrAppend(&description, " (default: ", flag->DefaultValue(), ")");
    }
    // "  --name         " then the description, wrapped to 80 columns under itself.
    constexpr size_t kIndent = 17;
    constexpr size_t kWidth = 80;
    std::string line = absl::StrFormat("  --%-12s", name);
    for (absl::string_view word : absl::StrSplit(description, ' ', absl::SkipEmpty())) {
      if (line.size() > kIndent && line.size() + 1 + word.size() > kWidth) {
        absl::StrAppend(&text, line, "\n");
        line = std::string(kIndent - 1, ' ');
      }
      absl::StrAppend(&line, " ", word);
    }
    absl::StrAppend(&text, line, "\n");
  }
  text +=
      "\n"
      "Examples:\n"
      "  nbd-bench --rw=randread --bs=4k --iodepth=16 --runtime=10s\n"
      "  nbd-bench nbd+unix:///?socket=/tmp/nbd.sock --compare --connections=4 --json\n"
      "  taskset -c 1 nbd-bench nbd://127.0.0.1/ --rw=randwrite --verify\n"
      "  nbd-bench --iodepth=1,4,16,64 --connections=1,2 --compare --plot=sweep.svg\n"
      "  nbd-bench --iodepth=256 --inflight_limit=auto   # 256 outstanding, the client adapts\n"
      "\n"
      "Exit status: 0 success, 1 failure (connection, I/O error, verify mismatch),\n"
      "2 usage error, 128+N when ended by signal N (the partial results are still printed).\n";
  return text;
}

}  // namespace nbdbench
