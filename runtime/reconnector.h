// runtime/reconnector.h — re-establishes one lost connection, off the ring's thread (ring
// threads mode; caller-driven mode uses RingReconnector, which needs no thread).
//
// A series of attempts runs on a helper thread (connect + handshake block, and must not stall
// the ring): attempt, back off 100 ms doubling to 2 s, attempt again, until one succeeds or
// the series' budget (a deadline, and optionally a number of attempts) is spent. The thread hands its outcome over under a mutex and wakes the
// ring, which collects it with TakeResult(). Abort() is final: it makes a running attempt
// return at once — the connect, every handshake wait and the back-off all watch one eventfd —
// and joins the thread, so Client::Close() never waits for a server that does not answer.
#ifndef NBDRING_RUNTIME_RECONNECTOR_H_
#define NBDRING_RUNTIME_RECONNECTOR_H_

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nbd/export_info.h"
#include "runtime/reconnect_series.h"

namespace nbdring {

class Reconnector : public ReconnectSeries {
 public:
  // One attempt: connect and negotiate before `deadline`, giving up with CancelledError as
  // soon as `abort_fd` is readable.
  using Attempt = std::function<absl::StatusOr<Reconnected>(absl::Time deadline, int abort_fd)>;

  // `max_attempts` per series; 0: as many as fit before the deadline.
  Reconnector(Attempt attempt, std::function<void()> wake_ring, int max_attempts = 0);
  ~Reconnector() override;  // Abort()
  Reconnector(const Reconnector&) = delete;
  Reconnector& operator=(const Reconnector&) = delete;

  // Starts a series of attempts that ends by `deadline`. Not while one runs; not after Abort.
  void Start(absl::Time deadline) override;
  // The outcome of the series once it ended (the thread is joined then), else nothing.
  std::optional<absl::StatusOr<Reconnected>> TakeResult() override;
  // Stops for good: a running attempt returns promptly and the thread is joined.
  void Abort() override;
  bool aborted() const override { return aborted_; }

 private:
  void RunSeries(absl::Time deadline);
  // Sleeps until `until` or until aborted; false when aborted.
  bool BackOff(absl::Time until) const;

  Attempt attempt_;
  std::function<void()> wake_ring_;
  int max_attempts_ = 0;
  FileDescriptor abort_fd_;  // eventfd, written once by Abort()
  bool aborted_ = false;     // ring thread's view
  std::thread thread_;
  std::mutex mutex_;
  std::optional<absl::StatusOr<Reconnected>> result_;  // guarded by mutex_
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RECONNECTOR_H_
