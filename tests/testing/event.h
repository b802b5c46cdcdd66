// tests/testing/event.h — a one-shot event a test thread waits for with a deadline, set from
// any thread (a server script, a callback). std:: primitives only: ThreadSanitizer cannot see
// inside Debian's absl::Mutex, which absl::Notification uses.
#ifndef NBDRING_TESTS_TESTING_EVENT_H_
#define NBDRING_TESTS_TESTING_EVENT_H_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/time/time.h"

namespace nbdring::testing {

class Event {
 public:
  void Notify() {
    std::lock_guard<std::mutex> lock(mutex_);
    notified_ = true;
    changed_.notify_all();
  }
  // True once Notify() ran; false when `timeout` passed first.
  bool WaitFor(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return notified_; });
  }
  bool notified() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return notified_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool notified_ = false;
};

}  // namespace nbdring::testing

#endif  // NBDRING_TESTS_TESTING_EVENT_H_
