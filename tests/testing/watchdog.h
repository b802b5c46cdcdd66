// tests/testing/watchdog.h — turns a hang into a prompt failure that says where it hung.
//
//   Watchdog watchdog("ServerDeathTest", absl::Seconds(20));
//   watchdog.Step("callbacks after SIGKILL");   // optional: names what the test waits for now
//
// If the Watchdog is still alive `limit` after construction it prints what it was watching
// (and the current step) and aborts the test binary, instead of leaving the test to Bazel's
// timeout. std:: synchronisation only (see shared notes: TSan cannot see inside absl::Mutex).
#ifndef NBDRING_TESTS_TESTING_WATCHDOG_H_
#define NBDRING_TESTS_TESTING_WATCHDOG_H_

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"

namespace nbd::testing {

class Watchdog {
 public:
  Watchdog(std::string what, absl::Duration limit);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Names the step the test is in, for the message if the limit passes.
  void Step(std::string step);

 private:
  std::mutex mutex_;
  std::condition_variable disarmed_changed_;
  bool disarmed_ = false;
  std::string step_;
  std::thread thread_;
};

}  // namespace nbd::testing

#endif  // NBDRING_TESTS_TESTING_WATCHDOG_H_
