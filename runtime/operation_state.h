// runtime/operation_state.h — what the library keeps about an Operation while it is queued
// or in flight. It lives inside the caller's Operation (nbdring/operation.h reserves the
// bytes, opaque to callers), so submitting allocates nothing; StateOf() reaches it.
//
// Written only by the thread that holds the operation: the submitting thread until the
// hand-over to a ring (Client::Submit), then that ring's thread until the completion
// callback. `submission` is also read by Cancel on any thread (through std::atomic_ref).
#ifndef NBDRING_RUNTIME_OPERATION_STATE_H_
#define NBDRING_RUNTIME_OPERATION_STATE_H_

#include <cstdint>
#include <new>

#include "absl/status/status.h"
#include "nbdring/operation.h"

namespace nbdring {

struct ConnectionGroup;

struct OperationState {
  Operation* next = nullptr;       // intrusive link: submission and wait queues
  uint64_t staged_bytes = 0;       // split requests: bytes already handed to slots
  uint32_t parts_outstanding = 0;  // split requests: parts sent but not completed
  bool fully_staged = false;       // every part has been handed to an in-flight slot
  bool waited_for_slot = false;    // counted once in queue_full_waits
  bool cancelled = false;          // completing with CancelledError once buffers are free
  uint64_t submission = 0;         // id of the newest submission (atomic_ref): see Cancel
  uint64_t last_batch = 0;         // newest send batch carrying a part of it
  int64_t submitted_ns = 0;        // MonotonicNanoseconds() at Submit, for the latency histograms
  absl::Status first_error;        // split requests: the first part's error wins
  ConnectionGroup* group = nullptr;  // the client's connections on the ring it was handed to

  static OperationState& Of(Operation* operation) {
    return *std::launder(reinterpret_cast<OperationState*>(operation->state_.bytes_));
  }
  static const OperationState& Of(const Operation* operation) {
    return *std::launder(reinterpret_cast<const OperationState*>(operation->state_.bytes_));
  }
};

inline OperationState& StateOf(Operation* operation) { return OperationState::Of(operation); }
inline const OperationState& StateOf(const Operation* operation) {
  return OperationState::Of(operation);
}

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_OPERATION_STATE_H_
