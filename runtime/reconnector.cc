#include "runtime/reconnector.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace nbdring {

Reconnector::Reconnector(Attempt attempt, std::function<void()> wake_ring, int max_attempts)
    : attempt_(std::move(attempt)),
      wake_ring_(std::move(wake_ring)),
      max_attempts_(max_attempts),
      // Without an eventfd (EMFILE) Abort() cannot interrupt an attempt, only wait for its
      // deadline: degraded, not broken.
      abort_fd_(eventfd(0, EFD_CLOEXEC)) {}

Reconnector::~Reconnector() { Abort(); }

void Reconnector::Start(absl::Time deadline) {
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    result_.reset();
  }
  thread_ = std::thread([this, deadline] { RunSeries(deadline); });
}

void Reconnector::RunSeries(absl::Time deadline) {
  pthread_setname_np(pthread_self(), "nbdring-reconn");
  absl::Duration backoff = absl::Milliseconds(100);
  std::optional<absl::StatusOr<Reconnected>> result;
  int attempts = 0;
  while (absl::Now() < deadline) {
    result = attempt_(deadline, abort_fd_.get());
    ++attempts;
    if (result->ok() || result->status().code() == absl::StatusCode::kCancelled) break;
    if (max_attempts_ > 0 && attempts >= max_attempts_) {
      result = absl::Status(result->status().code(),
                            absl::StrCat("gave up after ", attempts, " attempt(s), the last: ",
                                         result->status().message()));
      break;
    }
    if (!BackOff(std::min(absl::Now() + backoff, deadline))) {
      result = absl::CancelledError("the client closed while reconnecting");
      break;
    }
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
  if (!result.has_value()) {
    result = absl::UnavailableError("the reconnect delay ended before an attempt could be made");
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    result_ = std::move(result);
  }
  wake_ring_();
}

bool Reconnector::BackOff(absl::Time until) const {
  while (true) {
    absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) return true;
    pollfd abort_poll{abort_fd_.get(), POLLIN, 0};
    int ready = poll(&abort_poll, abort_fd_.get() >= 0 ? 1 : 0,
                     static_cast<int>(absl::ToInt64Milliseconds(left) + 1));
    if (ready > 0) return false;
  }
}

std::optional<absl::StatusOr<Reconnected>> Reconnector::TakeResult() {
  std::optional<absl::StatusOr<Reconnected>> result;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    result.swap(result_);
  }
  if (result.has_value() && thread_.joinable()) thread_.join();
  return result;
}

void Reconnector::Abort() {
  aborted_ = true;
  if (abort_fd_.get() >= 0) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t written = write(abort_fd_.get(), &one, sizeof(one));
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace nbdring
