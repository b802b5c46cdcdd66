#include "tests/testing/watchdog.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace nbd::testing {

Watchdog::Watchdog(std::string what, absl::Duration limit) {
  thread_ = std::thread([this, what = std::move(what), limit] {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!disarmed_changed_.wait_for(lock, absl::ToChronoMilliseconds(limit),
                                    [this] { return disarmed_; })) {
      std::fprintf(stderr, "%s is still running after %s%s%s: aborting\n", what.c_str(),
                   absl::FormatDuration(limit).c_str(),
                   step_.empty() ? "" : ", still waiting for ", step_.c_str());
      std::fflush(stderr);
      std::abort();
    }
  });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    disarmed_ = true;
  }
  disarmed_changed_.notify_all();
  thread_.join();
}

void Watchdog::Step(std::string step) {
  std::lock_guard<std::mutex> lock(mutex_);
  step_ = std::move(step);
}

}  // namespace nbd::testing
