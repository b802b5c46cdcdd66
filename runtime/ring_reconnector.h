// runtime/ring_reconnector.h — re-establishes one lost connection inside its ring's turns,
// with no thread: caller-driven mode (ClientOptions::threads = 0), where the caller's
// Client::Poll() turns the ring.
//
// Each attempt is a ResumableNegotiation. Between its steps the reconnector arms an
// IORING_OP_POLL_ADD on the attempt's socket for the direction the step asked for; the poll's
// completion runs the next step. Time comes from one IORING_OP_TIMEOUT (absolute,
// CLOCK_MONOTONIC) armed for the next moment that matters — the attempt's deadline
// (connect_timeout, within the series' deadline) or the end of the back-off — and moved
// earlier with a timeout update when that moment moves. So the ring's wait ends when the
// socket is ready or the time comes, and in caller-driven mode both post a completion, which
// makes Client::fd() readable for a caller that sleeps in its own epoll.
//
// The series is the threaded Reconnector's: attempt, back off 100 ms doubling to 2 s, attempt
// again, until one succeeds, the attempt budget is spent, or the series' deadline passes.
// When it ends, `on_result` runs (inside the completion handler or Start) and the connection
// collects the outcome with TakeResult(). Abort() needs no wait: it closes the attempt's
// socket and cancels the poll and the timer; their late completions are ignored.
//
// Each IoCompletion is in the kernel at most once (Ring::Reap links them into a list): a
// poll still armed on an abandoned attempt's socket is cancelled, and the next attempt's
// first poll waits for that completion (which steps the new attempt, harmlessly) to come back.
#ifndef NBDRING_RUNTIME_RING_RECONNECTOR_H_
#define NBDRING_RUNTIME_RING_RECONNECTOR_H_

#include <linux/time_types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/reconnect_series.h"
#include "runtime/resumable_negotiation.h"
#include "runtime/ring.h"

namespace nbdring {

struct RingReconnectPlan {
  NegotiationPlan negotiation;
  int64_t connect_timeout_ns = INT64_MAX;  // per attempt
  // Accepts or refuses what an attempt negotiated (the export must not have changed).
  std::function<absl::Status(const Negotiated&)> check;
};

class RingReconnector : public ReconnectSeries {
 public:
  // `max_attempts` per series; 0: as many as fit before the deadline.
  RingReconnector(Ring* ring, RingReconnectPlan plan, int max_attempts,
                  std::function<void()> on_result);
  ~RingReconnector() override;
  RingReconnector(const RingReconnector&) = delete;
  RingReconnector& operator=(const RingReconnector&) = delete;

  void Start(absl::Time deadline) override;
  std::optional<absl::StatusOr<Reconnected>> TakeResult() override;
  void Abort() override;
  bool aborted() const override { return aborted_; }
  bool holds_ring_operations() const override { return poll_armed_ || timer_armed_; }

 private:
  enum class Phase { kIdle, kAttempting, kBackingOff, kEnded };

  void BeginAttempt();
  void Advance(ResumableNegotiation::Want want);
  void AttemptFailed(absl::Status status);
  void End(absl::StatusOr<Reconnected> result);
  // Ends the attempt in progress (its socket closes; a poll on it is cancelled).
  void DropAttempt();
  void ArmPoll(bool readable);
  void CancelPoll();
  // The timer should fire at `ns` (CLOCK_MONOTONIC); INT64_MAX: never.
  void WakeAt(int64_t ns);
  void ArmTimer(int64_t ns);
  void TimeCame(int64_t now_ns);
  static void OnPoll(IoCompletion* completion);
  static void OnTimer(IoCompletion* completion);

  Ring* ring_;
  RingReconnectPlan plan_;
  int max_attempts_;
  std::function<void()> on_result_;

  Phase phase_ = Phase::kIdle;
  bool aborted_ = false;
  int64_t series_deadline_ns_ = 0;
  int64_t attempt_deadline_ns_ = 0;
  int64_t backoff_ns_ = 0;
  int attempts_ = 0;
  absl::Status last_failure_;
  std::unique_ptr<ResumableNegotiation> attempt_;
  std::optional<absl::StatusOr<Reconnected>> result_;

  IoCompletion poll_;
  bool poll_armed_ = false;    // poll_ is in the kernel
  IoCompletion timer_;
  bool timer_armed_ = false;   // timer_ is in the kernel
  int64_t timer_armed_for_ns_ = 0;
  int64_t wake_at_ns_ = INT64_MAX;
  // Read by the kernel when the SQE is submitted (later in this turn): members, not locals.
  __kernel_timespec timer_time_{};
  __kernel_timespec update_time_{};
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RING_RECONNECTOR_H_
