// nbdring/client_stats.h — the counters Client::stats() and Client::connection_stats() return.
#ifndef NBDRING_CLIENT_STATS_H_
#define NBDRING_CLIENT_STATS_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "nbdring/latency_histogram.h"

namespace nbdring {

// Counters, summed over connections and rings. Read at any time from any thread.
// enters, sqes, cqes and wakeups belong to rings: a client on a shared Runtime reports the
// whole of each ring it is on, other clients' work included (Runtime::stats() counts each
// ring once).
struct ClientStats {
  uint64_t requests = 0;          // operations completed (a split request counts once)
  uint64_t wire_requests = 0;     // NBD requests sent (split parts count separately)
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t errors = 0;
  uint64_t enters = 0;            // io_uring_enter calls
  uint64_t sqes = 0;              // SQEs submitted
  uint64_t cqes = 0;
  uint64_t queue_full_waits = 0;  // requests that had to wait for an in-flight slot
  uint64_t wakeups = 0;           // cross-thread submissions that had to wake a ring
  uint64_t reconnects = 0;        // connections re-established after a loss
  // Requests each connection may have in flight now, summed over connections (per
  // connection in Client::connection_stats()). With ClientOptions::inflight_limit = 0 (auto)
  // it is what each connection's limiter settled on at the moment; otherwise the fixed limit.
  uint64_t inflight_limit = 0;
  // From Submit to the completion callback, per kind of request (whole operations: a split
  // request counts once, when its last part completes). Requests refused before reaching a
  // connection are not counted. Kept per ring: Client::stats() has them,
  // Client::connection_stats() leaves them empty.
  LatencyHistogram read_latency;
  LatencyHistogram write_latency;
  LatencyHistogram other_latency;  // flush, trim, zero, cache, block status
  // With an automatic in-flight limit only (empty otherwise): from staging a request (or a
  // part of a split one) to its reply, all kinds together. This is what the limiter sees,
  // without the time requests wait for a slot; Client::stats() and connection_stats() both
  // have it.
  LatencyHistogram wire_latency;
};

// `stats` as OpenMetrics text (what Prometheus scrapes): counters nbdring_requests_total,
// nbdring_errors_total, nbdring_bytes_read_total, nbdring_bytes_written_total,
// nbdring_reconnects_total, nbdring_queue_full_waits_total, the gauge nbdring_inflight_limit
// (summed over connections), and the histogram
// nbdring_request_latency_seconds{command="read"|"write"|"other"} with a bucket per power of
// two of nanoseconds (le from 1.024e-06 s). `labels` (e.g. `export="vol7"`, already in
// OpenMetrics label syntax) is added to every sample; ends with "# EOF".
std::string OpenMetricsText(const ClientStats& stats, absl::string_view labels = "");

}  // namespace nbdring

#endif  // NBDRING_CLIENT_STATS_H_
