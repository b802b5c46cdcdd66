#include "tests/testing/completion_tracker.h"

#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nbd/wire.h"

namespace nbdring::testing {
namespace {

std::chrono::steady_clock::time_point DeadlineAfter(absl::Duration timeout) {
  return std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(timeout);
}

}  // namespace

void CompletionTracker::Track(Operation* operation) {
  operation->user_data = this;
  operation->on_complete = &CompletionTracker::OnComplete;
}

void CompletionTracker::Submitted(const Operation* operation) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++records_[operation].submissions;
  ++submitted_;
}

uint64_t CompletionTracker::Submit(Client& client, Operation* operation) {
  Track(operation);
  Submitted(operation);
  return client.Submit(operation);
}

Client::Callback CompletionTracker::Callback(const Operation* key) {
  Submitted(key);
  return [this, key](absl::Status status) {
    Count(key, status);
    std::lock_guard<std::mutex> lock(mutex_);
    changed_.notify_all();
  };
}

void CompletionTracker::Count(const Operation* key, const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mutex_);
  Record& record = records_[key];
  ++record.completions;
  record.status = UnsharedCopy(status);
  ++completed_;
  if (!status.ok()) {
    ++failed_;
    if (first_error_.ok()) first_error_ = UnsharedCopy(status);
  }
}

void CompletionTracker::OnComplete(Operation* operation, const absl::Status& status) {
  auto* self = static_cast<CompletionTracker*>(operation->user_data);
  self->Count(operation, status);
  // The hook may resubmit (counting it first), so it runs before waiters are told.
  if (self->hook_) self->hook_(operation, status);
  std::lock_guard<std::mutex> lock(self->mutex_);
  self->changed_.notify_all();
}

bool CompletionTracker::WaitFor(uint64_t count, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_until(lock, DeadlineAfter(timeout), [&] { return completed_ >= count; });
}

bool CompletionTracker::WaitFor(const Operation* operation, absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_until(lock, DeadlineAfter(timeout), [&] {
    auto it = records_.find(operation);
    return it != records_.end() && it->second.completions > 0;
  });
}

bool CompletionTracker::WaitForAll(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_until(lock, DeadlineAfter(timeout),
                             [&] { return completed_ >= submitted_; });
}

::testing::AssertionResult CompletionTracker::ExactlyOnce() const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [operation, record] : records_) {
    if (record.completions != record.submissions) {
      ::testing::AssertionResult failure = ::testing::AssertionFailure();
      if (operation == nullptr) {
        failure << "the callbacks given no key";
      } else {
        failure << "operation " << static_cast<const void*>(operation) << " ("
                << nbd::CommandName(operation->command) << " at offset " << operation->offset
                << " length " << operation->length << ")";
      }
      return failure << " was submitted " << record.submissions << " time(s) and completed "
                     << record.completions << " time(s); last status: " << record.status;
    }
  }
  return ::testing::AssertionSuccess() << submitted_ << " submissions, each completed once";
}

uint64_t CompletionTracker::submitted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return submitted_;
}

uint64_t CompletionTracker::completed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return completed_;
}

uint64_t CompletionTracker::failed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failed_;
}

int CompletionTracker::completions(const Operation* operation) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = records_.find(operation);
  return it == records_.end() ? 0 : it->second.completions;
}

absl::Status CompletionTracker::status(const Operation* operation) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = records_.find(operation);
  return it == records_.end() ? absl::OkStatus() : UnsharedCopy(it->second.status);
}

absl::Status CompletionTracker::first_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return UnsharedCopy(first_error_);
}

absl::Status UnsharedCopy(const absl::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(status.code(), std::string(status.message()));
}

bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout, absl::Duration poll) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(poll);
  }
  return true;
}

}  // namespace nbdring::testing
