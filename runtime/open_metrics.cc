// OpenMetricsText (nbdring/client_stats.h): ClientStats as the text Prometheus scrapes.
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nbdring/client_stats.h"

namespace nbdring {
namespace {

// `{labels}` or `{labels,extra}`, or "" when both are empty.
std::string LabelSet(absl::string_view labels, absl::string_view extra) {
  if (labels.empty() && extra.empty()) return "";
  if (labels.empty()) return absl::StrCat("{", extra, "}");
  if (extra.empty()) return absl::StrCat("{", labels, "}");
  return absl::StrCat("{", labels, ",", extra, "}");
}

void Counter(std::string* out, absl::string_view name, absl::string_view help, uint64_t value,
             absl::string_view labels) {
  absl::StrAppend(out, "# TYPE ", name, " counter\n# HELP ", name, " ", help, "\n", name,
                  "_total", LabelSet(labels, ""), " ", value, "\n");
}

void Histogram(std::string* out, absl::string_view command, const LatencyHistogram& histogram,
               absl::string_view labels) {
  const std::string command_label = absl::StrCat("command=\"", command, "\"");
  // One bucket per power of two of nanoseconds: the histogram's octave boundaries.
  uint64_t cumulative = 0;
  int bucket = 0;
  for (int exponent = LatencyHistogram::kMinExponent; exponent <= LatencyHistogram::kMaxExponent;
       ++exponent) {
    const uint64_t bound_ns = uint64_t{1} << exponent;
    while (bucket < LatencyHistogram::kBucketCount - 1 &&
           LatencyHistogram::BucketUpperBoundNs(bucket) <= bound_ns) {
      cumulative += histogram.bucket_count(bucket++);
    }
    absl::StrAppend(out, "nbdring_request_latency_seconds_bucket",
                    LabelSet(labels, absl::StrCat(command_label, ",le=\"",
                                                  absl::StrFormat("%.9g", bound_ns / 1e9), "\"")),
                    " ", cumulative, "\n");
  }
  absl::StrAppend(out, "nbdring_request_latency_seconds_bucket",
                  LabelSet(labels, absl::StrCat(command_label, ",le=\"+Inf\"")), " ",
                  histogram.count(), "\n");
  absl::StrAppend(out, "nbdring_request_latency_seconds_sum", LabelSet(labels, command_label),
                  " ", absl::StrFormat("%.9g", histogram.sum_ns() / 1e9), "\n");
  absl::StrAppend(out, "nbdring_request_latency_seconds_count", LabelSet(labels, command_label),
                  " ", histogram.count(), "\n");
}

}  // namespace

std::string OpenMetricsText(const ClientStats& stats, absl::string_view labels) {
  std::string out;
  Counter(&out, "nbdring_requests", "Requests completed.", stats.requests, labels);
  Counter(&out, "nbdring_errors", "Requests completed with an error.", stats.errors, labels);
  Counter(&out, "nbdring_bytes_read", "Bytes read from the server.", stats.bytes_read, labels);
  Counter(&out, "nbdring_bytes_written", "Bytes written to the server.", stats.bytes_written,
          labels);
  Counter(&out, "nbdring_reconnects", "Connections re-established after a loss.",
          stats.reconnects, labels);
  Counter(&out, "nbdring_queue_full_waits", "Requests that waited for an in-flight slot.",
          stats.queue_full_waits, labels);
  absl::StrAppend(&out,
                  "# TYPE nbdring_inflight_limit gauge\n"
                  "# HELP nbdring_inflight_limit Requests the connections may have in flight "
                  "now (summed; adaptive with inflight_limit=auto).\n"
                  "nbdring_inflight_limit",
                  LabelSet(labels, ""), " ", stats.inflight_limit, "\n");
  absl::StrAppend(&out,
                  "# TYPE nbdring_request_latency_seconds histogram\n"
                  "# HELP nbdring_request_latency_seconds From Submit to completion.\n");
  Histogram(&out, "read", stats.read_latency, labels);
  Histogram(&out, "write", stats.write_latency, labels);
  Histogram(&out, "other", stats.other_latency, labels);
  absl::StrAppend(&out, "# EOF\n");
  return out;
}

}  // namespace nbdring
