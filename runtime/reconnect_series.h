// runtime/reconnect_series.h — what a Connection needs from whatever re-establishes it: a
// series of attempts (back-off 100 ms doubling to 2 s, until one succeeds or the series'
// deadline and attempt budget are spent), whose outcome the connection collects on its ring's
// thread. Two kinds: Reconnector (a helper thread running blocking attempts; ring threads)
// and RingReconnector (non-blocking steps inside the loop's turns; caller-driven mode).
#ifndef NBDRING_RUNTIME_RECONNECT_SERIES_H_
#define NBDRING_RUNTIME_RECONNECT_SERIES_H_

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nbd/export_info.h"
#include "runtime/socket.h"
#include "runtime/tls_session.h"

namespace nbdring {

// A new socket to the same export, negotiated, and what it negotiated.
struct Reconnected {
  FileDescriptor fd;
  std::unique_ptr<TlsSession> tls;  // null for plain text
  nbd::ExportInfo info;
};

class ReconnectSeries {
 public:
  virtual ~ReconnectSeries() = default;
  // Starts a series of attempts that ends by `deadline`. Not while one runs; not after Abort.
  virtual void Start(absl::Time deadline) = 0;
  // The outcome of the series once it ended, else nothing. Ring thread.
  virtual std::optional<absl::StatusOr<Reconnected>> TakeResult() = 0;
  // Stops for good, promptly: a running attempt ends (its outcome is CancelledError) and no
  // server is waited for.
  virtual void Abort() = 0;
  virtual bool aborted() const = 0;
  // An operation of this series is in its ring's kernel queue (a poll, a timer), pointing at
  // memory of the series: it must not be destroyed before that completes, even after Abort.
  virtual bool holds_ring_operations() const { return false; }
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RECONNECT_SERIES_H_
