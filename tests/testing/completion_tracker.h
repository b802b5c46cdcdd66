// tests/testing/completion_tracker.h — counts the completions of caller-owned Operations, from
// any thread, so a test can wait for them with a deadline and check that every submission
// completed exactly once.
//
//   CompletionTracker tracker;
//   tracker.Submit(*client, &operation);          // Track() + Client::Submit, counted
//   ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(30)));
//   EXPECT_TRUE(tracker.ExactlyOnce());           // per operation: completions == submissions
//   EXPECT_TRUE(tracker.status(&operation).ok());
//
// The tracker owns the completion side: Track() points on_complete and user_data at it (put
// per-request data in a struct derived from Operation). An optional hook runs on the ring
// thread after each completion is recorded, e.g. to resubmit from inside the callback.
//
// The callback API (Client::Pread, ...) has no caller-owned Operation; Callback() counts one
// submission and returns the callback to pass, which is recorded like on_complete:
//
//   Operation read_key = ...;                     // any Operation of the test's, never submitted
//   client->Pread(buffer, 4096, 0, tracker.Callback(&read_key));
//   ASSERT_TRUE(tracker.WaitFor(&read_key, absl::Seconds(10)));
//   client->Pwrite(data, 4096, 0, tracker.Callback());   // no key: counted with the others
//
// Requests given no key are counted together under nullptr (ExactlyOnce() compares their
// totals). The hook does not run for callback completions.
// Statuses are stored as unshared copies (UnsharedCopy below).
// Synchronisation is std:: only (see shared notes: TSan cannot see inside absl::Mutex).
#ifndef NBDRING_TESTS_TESTING_COMPLETION_TRACKER_H_
#define NBDRING_TESTS_TESTING_COMPLETION_TRACKER_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"

namespace nbdring::testing {

class CompletionTracker {
 public:
  using Hook = std::function<void(Operation* operation, const absl::Status& status)>;

  CompletionTracker() = default;
  explicit CompletionTracker(Hook hook) : hook_(std::move(hook)) {}
  CompletionTracker(const CompletionTracker&) = delete;
  CompletionTracker& operator=(const CompletionTracker&) = delete;

  // Points `operation`'s on_complete and user_data at this tracker.
  void Track(Operation* operation);
  // Counts one submission of `operation`: call before Client::Submit (or use Submit below).
  void Submitted(const Operation* operation);
  // Track + Submitted + client.Submit(operation); returns what Submit returned.
  uint64_t Submit(Client& client, Operation* operation);
  // Counts one submission under `key` and returns a Client::Callback recording its completion.
  // `key` only names the request (fill in command, offset and length for failure messages).
  Client::Callback Callback(const Operation* key = nullptr);

  // True once completions reached `count` in total; false when `timeout` passed first.
  bool WaitFor(uint64_t count, absl::Duration timeout = absl::Seconds(60));
  // True once every counted submission has completed at least once.
  bool WaitForAll(absl::Duration timeout = absl::Seconds(60));
  // True once `operation` (or Callback key) has completed at least once.
  bool WaitFor(const Operation* operation, absl::Duration timeout = absl::Seconds(60));
  // Every operation completed exactly as often as it was submitted, and nothing completed
  // that was never counted as submitted; the failure names the first operation that did not.
  ::testing::AssertionResult ExactlyOnce() const;

  uint64_t submitted() const;
  uint64_t completed() const;
  uint64_t failed() const;
  int completions(const Operation* operation) const;
  // The status of the latest completion of `operation` (OK when none yet).
  absl::Status status(const Operation* operation) const;
  // The first non-OK status of any completion, or OK.
  absl::Status first_error() const;

 private:
  struct Record {
    int submissions = 0;
    int completions = 0;
    absl::Status status;
  };
  static void OnComplete(Operation* operation, const absl::Status& status);
  void Count(const Operation* key, const absl::Status& status);

  Hook hook_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::unordered_map<const Operation*, Record> records_;
  uint64_t submitted_ = 0;
  uint64_t completed_ = 0;
  uint64_t failed_ = 0;
  absl::Status first_error_;
};

// A copy of `status` that shares no storage with it. Callbacks store this instead of the
// status they were given: absl::Status shares its message through a reference count that
// lives in Debian's uninstrumented libabsl, so a status read on the test thread and released
// last on a ring thread looks like a data race to ThreadSanitizer.
absl::Status UnsharedCopy(const absl::Status& status);

// Waits until `done()` holds, checking whenever `notify` (a condition the caller signals) or
// every `poll` elapses; false when `timeout` passed first. For tests waiting on things that
// have no callback of their own (a counter in ClientStats, a server's state).
bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout,
               absl::Duration poll = absl::Milliseconds(2));

}  // namespace nbdring::testing

#endif  // NBDRING_TESTS_TESTING_COMPLETION_TRACKER_H_
