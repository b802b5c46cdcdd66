#include "tools/bench/report.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace nbdbench {
namespace {

double Micros(uint64_t nanos) { return static_cast<double>(nanos) / 1000.0; }

struct Percentile {
  const char* json_key;
  const char* column;
  double percent;
};
constexpr Percentile kPercentiles[] = {
    {"p50", "p50", 50}, {"p90", "p90", 90}, {"p99", "p99", 99}, {"p999", "p99.9", 99.9}};

}  // namespace

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  if (values.size() % 2 == 1) return values[middle];
  return (values[middle - 1] + values[middle]) / 2;
}

MedianRatios ComputeMedianRatios(const std::vector<CompareRound>& rounds) {
  std::vector<double> iops;
  std::vector<double> cpu;
  for (const CompareRound& round : rounds) {
    if (round.libnbd.iops() > 0) iops.push_back(round.nbdring.iops() / round.libnbd.iops());
    if (round.libnbd.cpu_us_per_io() > 0) {
      cpu.push_back(round.nbdring.cpu_us_per_io() / round.libnbd.cpu_us_per_io());
    }
  }
  return MedianRatios{Median(std::move(iops)), Median(std::move(cpu))};
}

nlohmann::ordered_json RunJson(const RunResult& result) {
  nlohmann::ordered_json json;
  json["engine"] = EngineName(result.engine);
  json["rw"] = ReadWriteName(result.rw);
  json["bs"] = result.block_size;
  json["iodepth"] = result.iodepth;
  json["connections"] = result.connections;
  json["threads"] = result.threads;
  json["ios"] = result.ios;
  json["seconds"] = result.seconds;
  json["iops"] = result.iops();
  json["mib_per_s"] = result.mib_per_s();
  nlohmann::ordered_json latency;
  for (const Percentile& percentile : kPercentiles) {
    latency[percentile.json_key] = Micros(result.latency.Percentile(percentile.percent));
  }
  latency["max"] = Micros(result.latency.max());
  json["lat_us"] = latency;
  json["cpu_us_per_io"] = result.cpu_us_per_io();
  json["cpu_percent"] = result.cpu_percent();
  if (result.enters && result.ios > 0) {
    json["enters_per_io"] = static_cast<double>(*result.enters) / static_cast<double>(result.ios);
  } else {
    json["enters_per_io"] = nullptr;
  }
  if (result.enters && result.sqes && *result.enters > 0) {
    json["sqes_per_enter"] =
        static_cast<double>(*result.sqes) / static_cast<double>(*result.enters);
  } else {
    json["sqes_per_enter"] = nullptr;
  }
  if (const std::optional<ConnectionSpread> spread = SpreadOf(result)) {
    json["connection_iops"] = {{"min", spread->min_iops},
                               {"median", spread->median_iops},
                               {"max", spread->max_iops}};
  } else {
    json["connection_iops"] = nullptr;
  }
  json["inflight_limit"] = result.inflight_limit ? nlohmann::ordered_json(*result.inflight_limit)
                                                 : nlohmann::ordered_json(nullptr);
  if (result.wire_p50_ns && result.wire_p99_ns) {
    json["wire_lat_us"] = {{"p50", Micros(*result.wire_p50_ns)},
                           {"p99", Micros(*result.wire_p99_ns)}};
  } else {
    json["wire_lat_us"] = nullptr;
  }
  if (result.interrupted) json["interrupted"] = true;
  if (!result.notes.empty()) json["notes"] = result.notes;
  return json;
}

nlohmann::ordered_json CompareJson(const std::vector<CompareRound>& rounds) {
  nlohmann::ordered_json json;
  json["rounds"] = nlohmann::ordered_json::array();
  for (const CompareRound& round : rounds) {
    nlohmann::ordered_json entry;
    entry["nbdring"] = RunJson(round.nbdring);
    entry["libnbd"] = RunJson(round.libnbd);
    json["rounds"].push_back(std::move(entry));
  }
  const MedianRatios ratios = ComputeMedianRatios(rounds);
  json["median_ratio"] = {{"iops", ratios.iops}, {"cpu_us_per_io", ratios.cpu_us_per_io}};
  return json;
}

namespace {

std::string WorkloadLineWith(const RunSpec& spec, absl::string_view iodepth,
                             absl::string_view connections, absl::string_view target) {
  std::string line =
      absl::StrFormat("%s bs=%d iodepth=%s connections=%s threads=%d", ReadWriteName(spec.rw),
                      spec.block_size, iodepth, connections, spec.threads);
  if (spec.clients > 1) absl::StrAppend(&line, " clients=", spec.clients);
  if (spec.rw == ReadWrite::kRandRw) absl::StrAppend(&line, " rwmixread=", spec.read_percent);
  if (spec.inflight_limit >= 0) {
    absl::StrAppend(&line, " inflight_limit=",
                    spec.inflight_limit == 0 ? "auto" : absl::StrCat(spec.inflight_limit));
  }
  if (spec.runtime > absl::ZeroDuration()) {
    absl::StrAppend(&line, " runtime=", absl::FormatDuration(spec.runtime));
  }
  if (spec.size_limit != 0) absl::StrAppend(&line, " size=", spec.size_limit);
  absl::StrAppend(&line, " ramp=", absl::FormatDuration(spec.ramp),
                  absl::StrFormat(" region=%d+%d", spec.region_offset, spec.region_length));
  if (spec.verify) absl::StrAppend(&line, " verify");
  if (!target.empty()) absl::StrAppend(&line, "  ", target);
  return line;
}

}  // namespace

std::string WorkloadLine(const RunSpec& spec, absl::string_view target) {
  return WorkloadLineWith(spec, absl::StrCat(spec.iodepth), absl::StrCat(spec.connections),
                          target);
}

std::string SweepWorkloadLine(const RunSpec& spec, const std::vector<int>& iodepths,
                              const std::vector<int>& connection_counts,
                              absl::string_view target) {
  return WorkloadLineWith(spec, absl::StrJoin(iodepths, ","),
                          absl::StrJoin(connection_counts, ","), target);
}

std::string TableHeader() {
  std::string header = absl::StrFormat("%-18s %10s %9s", "engine", "IOPS", "MiB/s");
  for (const Percentile& percentile : kPercentiles) {
    // One more than the data columns: "µ" is two bytes of UTF-8 but one column on screen.
    absl::StrAppendFormat(&header, " %9s", absl::StrCat(percentile.column, "µs"));
  }
  absl::StrAppendFormat(&header, " %10s %6s %10s %9s %10s", "maxµs", "CPU%", "CPUµs/IO",
                        "enters/IO", "SQEs/enter");
  return header;
}

std::string TableRow(absl::string_view label, const RunResult& result) {
  std::string row = absl::StrFormat("%-18s %10.0f %9.1f", label, result.iops(), result.mib_per_s());
  for (const Percentile& percentile : kPercentiles) {
    absl::StrAppendFormat(&row, " %8.1f", Micros(result.latency.Percentile(percentile.percent)));
  }
  absl::StrAppendFormat(&row, " %9.1f %6.1f %9.2f", Micros(result.latency.max()),
                        result.cpu_percent(), result.cpu_us_per_io());
  if (result.enters && result.sqes && result.ios > 0) {
    absl::StrAppendFormat(
        &row, " %9.3f %10.2f",
        static_cast<double>(*result.enters) / static_cast<double>(result.ios),
        *result.enters > 0 ? static_cast<double>(*result.sqes) / static_cast<double>(*result.enters)
                           : 0.0);
  } else {
    absl::StrAppendFormat(&row, " %9s %10s", "-", "-");
  }
  if (result.inflight_limit) {
    absl::StrAppend(&row, "  limit ", *result.inflight_limit);
    if (result.wire_p99_ns) {
      absl::StrAppendFormat(&row, " (wire p50/p99 %.1f/%.1fµs)", Micros(*result.wire_p50_ns),
                            Micros(*result.wire_p99_ns));
    }
  }
  if (result.interrupted) absl::StrAppend(&row, "  (interrupted)");
  return row;
}

std::string HistogramLines(const LatencyHistogram& histogram) {
  if (histogram.count() == 0) return "";
  // Counts per [2^k, 2^(k+1)) µs; values under 1 µs go with [0, 1).
  std::vector<uint64_t> per_octave(64, 0);
  for (int index = 0; index < LatencyHistogram::kBucketCount; ++index) {
    const uint64_t count = histogram.bucket_count(index);
    if (count == 0) continue;
    const uint64_t micros = LatencyHistogram::BucketLow(index) / 1000;
    const int octave = micros == 0 ? 0 : 64 - __builtin_clzll(micros);
    per_octave[static_cast<size_t>(octave)] += count;
  }
  uint64_t largest = 0;
  for (uint64_t count : per_octave) largest = std::max(largest, count);
  std::string lines;
  uint64_t cumulative = 0;
  const double total = static_cast<double>(histogram.count());
  for (int octave = 0; octave < 64; ++octave) {
    const uint64_t count = per_octave[static_cast<size_t>(octave)];
    if (count == 0) continue;
    cumulative += count;
    const uint64_t low = octave == 0 ? 0 : uint64_t{1} << (octave - 1);
    const uint64_t high = uint64_t{1} << octave;
    absl::StrAppendFormat(&lines, "  [%8d, %8d) µs %10d %6.2f %%  cumulative %6.2f %%  %s\n",
                          low, high, count, 100.0 * count / total, 100.0 * cumulative / total,
                          std::string(static_cast<size_t>(40 * count / largest), '#'));
  }
  return lines;
}

std::string SpreadLine(const RunResult& result) {
  const std::optional<ConnectionSpread> spread = SpreadOf(result);
  if (!spread || result.connection_ios.size() < 2) return "";
  return absl::StrFormat("%-18s per-connection IOPS min %.0f, median %.0f, max %.0f (max/min %s)",
                         "", spread->min_iops, spread->median_iops, spread->max_iops,
                         spread->min_iops > 0
                             ? absl::StrFormat("%.2f", spread->max_iops / spread->min_iops)
                             : std::string("inf"));
}

std::string CompareSummary(const std::vector<CompareRound>& rounds) {
  const MedianRatios ratios = ComputeMedianRatios(rounds);
  return absl::StrFormat("median over %d rounds, nbdring/libnbd: IOPS x%.3f, CPU-µs/IO x%.3f",
                         rounds.size(), ratios.iops, ratios.cpu_us_per_io);
}

}  // namespace nbdbench
