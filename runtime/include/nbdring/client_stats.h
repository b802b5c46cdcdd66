// nbdring/client_stats.h — the counters Client::stats() and Client::connection_stats() return.
#ifndef NBDRING_CLIENT_STATS_H_
#define NBDRING_CLIENT_STATS_H_

#include <cstdint>

namespace nbdring {

// Counters, summed over connections and rings. Read at any time from any thread.
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
};

}  // namespace nbdring

#endif  // NBDRING_CLIENT_STATS_H_
