#include "runtime/ring_reconnector.h"

#include <poll.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "runtime/clock.h"

namespace nbdring {
namespace {

constexpr int64_t kFirstBackoffNs = 100'000'000;
constexpr int64_t kMaxBackoffNs = 2'000'000'000;

__kernel_timespec Timespec(int64_t ns) {
  __kernel_timespec time{};
  time.tv_sec = ns / 1'000'000'000;
  time.tv_nsec = ns % 1'000'000'000;
  return time;
}

}  // namespace

RingReconnector::RingReconnector(Ring* ring, RingReconnectPlan plan, int max_attempts,
                                 std::function<void()> on_result)
    : ring_(ring),
      plan_(std::move(plan)),
      max_attempts_(max_attempts),
      on_result_(std::move(on_result)) {
  poll_.handler = &RingReconnector::OnPoll;
  poll_.owner = this;
  timer_.handler = &RingReconnector::OnTimer;
  timer_.owner = this;
}

// A poll or timer still in the kernel goes with the ring (the loop outlives no connection);
// none refers to memory of ours once submitted.
RingReconnector::~RingReconnector() = default;

void RingReconnector::Start(absl::Time deadline) {
  const int64_t now = MonotonicNanoseconds();
  const absl::Duration left = deadline - absl::Now();
  series_deadline_ns_ =
      left == absl::InfiniteDuration() ? INT64_MAX
                                       : DeadlineAfter(now, absl::ToInt64Nanoseconds(left));
  backoff_ns_ = kFirstBackoffNs;
  attempts_ = 0;
  last_failure_ =
      absl::UnavailableError("the reconnect delay ended before an attempt could be made");
  result_.reset();
  if (now >= series_deadline_ns_) {
    End(last_failure_);
    return;
  }
  BeginAttempt();
}

void RingReconnector::BeginAttempt() {
  phase_ = Phase::kAttempting;
  attempt_deadline_ns_ =
      std::min(DeadlineAfter(MonotonicNanoseconds(), plan_.connect_timeout_ns), series_deadline_ns_);
  attempt_ = std::make_unique<ResumableNegotiation>(plan_.negotiation);
  Advance(attempt_->Start());
}

void RingReconnector::Advance(ResumableNegotiation::Want want) {
  using Want = ResumableNegotiation::Want;
  switch (want) {
    case Want::kReadable:
    case Want::kWritable:
      ArmPoll(want == Want::kReadable);
      WakeAt(attempt_deadline_ns_);
      return;
    case Want::kFailed:
      AttemptFailed(attempt_->status());
      return;
    case Want::kDone: {
      Negotiated negotiated = attempt_->Take();
      attempt_.reset();
      if (plan_.check) {
        if (absl::Status same = plan_.check(negotiated); !same.ok()) {
          AttemptFailed(same);
          return;
        }
      }
      End(Reconnected{std::move(negotiated.fd), std::move(negotiated.tls),
                      std::move(negotiated.info)});
      return;
    }
  }
}

void RingReconnector::AttemptFailed(absl::Status status) {
  DropAttempt();
  ++attempts_;
  if (max_attempts_ > 0 && attempts_ >= max_attempts_) {
    End(absl::Status(status.code(), absl::StrCat("gave up after ", attempts_,
                                                  " attempt(s), the last: ", status.message())));
    return;
  }
  last_failure_ = std::move(status);
  const int64_t now = MonotonicNanoseconds();
  if (now >= series_deadline_ns_) {
    End(last_failure_);
    return;
  }
  phase_ = Phase::kBackingOff;
  WakeAt(std::min(DeadlineAfter(now, backoff_ns_), series_deadline_ns_));
  backoff_ns_ = std::min(backoff_ns_ * 2, kMaxBackoffNs);
}

void RingReconnector::TimeCame(int64_t now_ns) {
  if (phase_ == Phase::kAttempting && now_ns >= attempt_deadline_ns_) {
    AttemptFailed(attempt_->Abandon(
        absl::DeadlineExceededError(absl::StrCat("timed out ", attempt_->stage()))));
  } else if (phase_ == Phase::kBackingOff) {
    if (now_ns >= series_deadline_ns_) {
      End(last_failure_);
    } else {
      BeginAttempt();
    }
  }
}

void RingReconnector::End(absl::StatusOr<Reconnected> result) {
  DropAttempt();
  phase_ = Phase::kEnded;
  WakeAt(INT64_MAX);
  result_ = std::move(result);
  on_result_();  // may Abort() or Start() again: nothing of this call's state is used after
}

void RingReconnector::DropAttempt() {
  attempt_.reset();  // closes its socket (a poll on it still holds the file: cancel that)
  CancelPoll();
}

std::optional<absl::StatusOr<Reconnected>> RingReconnector::TakeResult() {
  std::optional<absl::StatusOr<Reconnected>> result;
  result.swap(result_);
  return result;
}

void RingReconnector::Abort() {
  if (aborted_) return;
  aborted_ = true;
  const bool running = phase_ == Phase::kAttempting || phase_ == Phase::kBackingOff;
  DropAttempt();
  WakeAt(INT64_MAX);
  phase_ = Phase::kEnded;
  if (running) result_ = absl::CancelledError("the client closed while reconnecting");
}

void RingReconnector::ArmPoll(bool readable) {
  // A poll still in the kernel (an abandoned attempt's, being cancelled) steps this attempt
  // when it comes back; the step then asks again.
  if (poll_armed_ || attempt_ == nullptr) return;
  io_uring_sqe* sqe = ring_->Prepare(&poll_);
  io_uring_prep_poll_add(sqe, attempt_->fd(), readable ? POLLIN : POLLOUT);
  poll_armed_ = true;
}

void RingReconnector::CancelPoll() {
  if (!poll_armed_) return;
  io_uring_sqe* sqe = ring_->Prepare(nullptr);
  io_uring_prep_cancel(sqe, &poll_, 0);
}

void RingReconnector::OnPoll(IoCompletion* completion) {
  auto* self = static_cast<RingReconnector*>(completion->owner);
  self->poll_armed_ = false;
  if (self->aborted_ || self->phase_ != Phase::kAttempting || self->attempt_ == nullptr) return;
  self->Advance(self->attempt_->Step());
}

void RingReconnector::WakeAt(int64_t ns) {
  wake_at_ns_ = ns;
  if (ns == INT64_MAX) {
    if (timer_armed_) {
      io_uring_sqe* sqe = ring_->Prepare(nullptr);
      io_uring_prep_timeout_remove(sqe, reinterpret_cast<uint64_t>(&timer_), 0);
    }
    return;
  }
  if (!timer_armed_) {
    ArmTimer(ns);
  } else if (ns < timer_armed_for_ns_) {
    // Earlier than the armed timer: move it (if it already fired or is being removed, its
    // completion re-arms for wake_at_ns_).
    update_time_ = Timespec(ns);
    io_uring_sqe* sqe = ring_->Prepare(nullptr);
    io_uring_prep_timeout_update(sqe, &update_time_, reinterpret_cast<uint64_t>(&timer_),
                                 IORING_TIMEOUT_ABS);
    timer_armed_for_ns_ = ns;
  }
  // Later: the armed timer fires early and re-arms for wake_at_ns_.
}

void RingReconnector::ArmTimer(int64_t ns) {
  timer_time_ = Timespec(ns);
  io_uring_sqe* sqe = ring_->Prepare(&timer_);
  io_uring_prep_timeout(sqe, &timer_time_, 0, IORING_TIMEOUT_ABS);
  timer_armed_ = true;
  timer_armed_for_ns_ = ns;
}

void RingReconnector::OnTimer(IoCompletion* completion) {
  auto* self = static_cast<RingReconnector*>(completion->owner);
  self->timer_armed_ = false;
  if (self->aborted_ || self->wake_at_ns_ == INT64_MAX) return;
  const int64_t now = MonotonicNanoseconds();
  if (now < self->wake_at_ns_) {
    self->ArmTimer(self->wake_at_ns_);  // fired early (it was armed for an earlier moment)
    return;
  }
  self->wake_at_ns_ = INT64_MAX;
  self->TimeCame(now);
}

}  // namespace nbdring
