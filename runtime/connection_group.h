// runtime/connection_group.h — one client's connections on one RingLoop: what the loop
// dispatches that client's operations to, drains when that client closes, and reports in that
// client's stats. A loop serves any number of groups (a shared Runtime: many clients, many
// exports), and closing one group never disturbs the others.
//
// Life of a group:
//   the client's thread builds it (connections constructed, not started: a Connection touches
//   its ring only once started) -> RingLoop::Attach -> the loop adopts it at the top of a
//   turn (starts the connections; an operation that arrives for a group not adopted yet makes
//   the loop adopt first) -> RingLoop::Detach -> the loop drains it (requests already
//   submitted finish, within close_timeout_ns), disconnects every connection, lets go of it
//   and marks it finished -> the client, once WaitFinished returns, may destroy it.
// The group outlives its loop's last look at it: the client keeps it (and its counters,
// which stats read from any thread) until the client itself is destroyed.
#ifndef NBDRING_RUNTIME_CONNECTION_GROUP_H_
#define NBDRING_RUNTIME_CONNECTION_GROUP_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "runtime/connection.h"
#include "runtime/latency_recorder.h"

namespace nbdring {

struct ConnectionGroup {
  // Fixed once the group is handed to a loop (stats read it from any thread).
  std::vector<std::unique_ptr<Connection>> connections;
  LatencyRecorder latency;  // the connections record into it (ConnectionOptions::latency)
  int64_t request_timeout_ns = 0;     // 0: none; the loop checks timeouts if any group has one
  int64_t close_timeout_ns = INT64_MAX;

  // Any thread: Detach sets it; the loop notices it at the top of a turn.
  std::atomic<bool> detach_requested{false};

  // The loop's thread only.
  bool adopted = false;
  bool closing = false;
  bool abandoned = false;  // the close deadline passed and the connections were failed
  int64_t close_deadline_ns = 0;
  uint32_t local_failures = 0;  // operations of this group waiting in the loop's failure queue
  size_t dispatch_start = 0;    // where the search for the least loaded connection begins
  ConnectionGroup* next_attached = nullptr;  // the loop's attach stack

  // Set by the loop once it let go of the group: every request completed, every connection
  // closed. Read without the lock only on the loop's own thread (the only writer).
  void MarkFinished() {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    finished_changed_.notify_all();
  }
  bool finished_on_loop_thread() const { return finished_; }
  void WaitFinished() {
    std::unique_lock<std::mutex> lock(mutex_);
    finished_changed_.wait(lock, [this] { return finished_; });
  }
  bool finished() {
    std::lock_guard<std::mutex> lock(mutex_);
    return finished_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable finished_changed_;
  bool finished_ = false;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_CONNECTION_GROUP_H_
