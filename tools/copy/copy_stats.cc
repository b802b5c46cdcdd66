#include "tools/copy/copy_stats.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace nbdcopy {
namespace {

std::string Duration(uint64_t ns) {
  if (ns >= 10'000'000) return absl::StrFormat("%.1f ms", ns / 1e6);
  return absl::StrFormat("%.0f us", ns / 1e3);
}

std::string Percentiles(absl::string_view what, const nbdring::LatencyHistogram& histogram) {
  if (histogram.count() == 0) return "";
  return absl::StrCat("; ", what, " latency p50 ", Duration(histogram.PercentileNs(0.5)),
                      " p99 ", Duration(histogram.PercentileNs(0.99)), " p99.9 ",
                      Duration(histogram.PercentileNs(0.999)), " (", histogram.count(), ")");
}

}  // namespace

std::string StatsLine(absl::string_view side, absl::string_view spec,
                      const nbdring::ClientStats& stats) {
  return absl::StrCat(side, " ", spec, ": ", stats.requests, " requests (", stats.errors,
                      " errors, ", stats.reconnects, " reconnects), ", stats.bytes_read,
                      " bytes read, ", stats.bytes_written, " written",
                      Percentiles("read", stats.read_latency),
                      Percentiles("write", stats.write_latency),
                      Percentiles("zero/trim/flush/block status", stats.other_latency));
}

}  // namespace nbdcopy
