// tools/copy/copy_stats.h — what nbd-copy --stats prints at exit: per NBD endpoint, the
// client's counters and its latency percentiles (nbdring::ClientStats).
#ifndef NBDRING_TOOLS_COPY_COPY_STATS_H_
#define NBDRING_TOOLS_COPY_COPY_STATS_H_

#include <string>

#include "absl/strings/string_view.h"
#include "nbdring/client_stats.h"

namespace nbdcopy {

// One line, e.g. "source nbd://h/: 4096 requests (0 errors, 0 reconnects), 1073741824
// bytes read, 0 written; read latency p50 120 us p99 950 us p99.9 1.9 ms; ...".
std::string StatsLine(absl::string_view side, absl::string_view spec,
                      const nbdring::ClientStats& stats);

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_COPY_STATS_H_
