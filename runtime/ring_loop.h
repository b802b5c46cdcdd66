// runtime/ring_loop.h — one io_uring and the connections it drives, turned by one thread.
//
// The connections come in ConnectionGroups, one per client attached to this loop (a private
// client's loop has one; a shared Runtime's loops have one per client placed on them).
//
// A turn of the loop:
//   1. adopt groups attached since the last turn, and note groups asked to detach;
//   2. take every Operation other threads pushed into the inbox and dispatch it to the usable
//      connection of its group with the fewest outstanding bytes;
//   3. let every connection stage what waits and start its send (one sendmsg per connection);
//   4. one io_uring_enter: submit all SQEs and wait for at least one completion (bounded by
//      the request-timeout check interval when timeouts are on, and by the caller's limit);
//   5. drain the completion queue, then run the handlers (replies are parsed, callbacks run;
//      callbacks that submit go straight to step 2's dispatch, no queue, no wakeup).
// Other threads reach the loop only through Attach(), Detach(), Submit() and Cancel(): a
// lock-free push and, when needed, one eventfd write, whose completion (a read armed on the
// eventfd) ends the loop's wait.
//
// A detached group drains: its requests already submitted finish (within its close timeout,
// after which its busy connections are failed), its connections disconnect, and once nothing
// of it is left the loop lets go of it and marks it finished. The other groups go on.
//
// Who turns it: a RingThread (threads >= 1) turns it for ever on a thread of its own; in
// caller-driven mode (threads = 0) the thread that created the loop turns it from Poll().
// Every turn runs on the creating thread (the ring is SINGLE_ISSUER).
//
// The notify fd (caller-driven mode): an eventfd registered with the ring, readable when a
// turn has work — completions posted, kernel task work pending, or requests queued for the
// next turn. Notifications are off inside a turn (the turn itself posts completions, which
// would wake the caller for nothing) and off until someone asks for the fd, so a caller that
// just calls Poll() in a loop pays no syscall for it.
#ifndef NBDRING_RUNTIME_RING_LOOP_H_
#define NBDRING_RUNTIME_RING_LOOP_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nbdring/client_stats.h"
#include "nbdring/operation.h"
#include "runtime/batch_window.h"
#include "runtime/connection.h"
#include "runtime/connection_group.h"
#include "runtime/operation_queue.h"
#include "runtime/ring.h"
#include "runtime/socket.h"

namespace nbdring {

struct RingOptions {
  unsigned entries = 64;         // submission queue size (the completion queue is twice that)
  int64_t batch_delay_ns = 0;    // see ClientOptions::completion_batch_delay
  uint32_t batch_min_in_flight = 0;
  int index = 0;  // the thread is named "nbdring-ring-<index>"
  int cpu = -1;   // pinned to this CPU; -1: not pinned
  bool notify_fd = false;  // set up the notify fd (caller-driven mode)
  ReceiveBufferRingOptions receive_buffers;
};

class RingLoop {
 public:
  // Sets up the ring (the kernel probe) on the calling thread, which becomes the only one
  // allowed to call Turn().
  static absl::StatusOr<std::unique_ptr<RingLoop>> Create(const RingOptions& options);
  ~RingLoop();  // the loop must have finished (Turn returned false) or never run

  // One turn, waiting at most `max_wait_ns` for completions (-1: as long as the loop likes,
  // 0: not at all). False once a close has finished: every group finished and let go; no
  // further turn is needed.
  bool Turn(int64_t max_wait_ns);

  // Any thread: hands `group` (its connections built for this loop's ring, not started) to
  // the loop, which adopts it before it dispatches anything to it. The group must stay alive
  // until it is finished (see connection_group.h).
  void Attach(ConnectionGroup* group);
  // Any thread: the loop drains `group` and marks it finished (ConnectionGroup::WaitFinished);
  // connections still busy after its close_timeout_ns are failed. Nothing may be submitted to
  // the group any more, except from this loop's callbacks (those operations fail).
  void Detach(ConnectionGroup* group);

  // Any thread. StateOf(operation).group names the group (attached to this loop). From a
  // callback of this loop the operation is dispatched at once.
  void Submit(Operation* operation);
  // Any thread: cancel `operation` if this loop holds it on `submission`. Does not wait.
  void Cancel(Operation* operation, uint64_t submission);
  // Any thread. Every group still attached is detached; once all are finished the loop
  // finishes (Turn returns false).
  void RequestClose();

  // True on the loop's thread while a turn runs (callbacks run inside turns).
  bool in_turn_on_this_thread() const {
    return std::this_thread::get_id() == thread_id_ && in_turn_;
  }
  bool on_this_thread() const { return std::this_thread::get_id() == thread_id_; }
  // The notify fd (see the top of this file), enabling notifications; -1 without one. Call
  // on the loop's thread, outside a turn.
  int EnableNotifyFd();

  // How the ring was set up (Ring::setup_description), for Client::notes().
  const std::string& ring_description() const { return ring_->setup_description(); }
  Ring* ring() { return ring_.get(); }
  // This ring's counters (enters, SQEs, CQEs, wakeups), which all its connections share.
  ClientStats RingCounters() const;
  // Makes sure a turn comes soon (any thread; on this thread outside a turn, in caller-driven
  // mode, through the notify fd).
  void Wake();

 private:
  RingLoop() = default;
  void Dispatch(Operation* operation);
  // Adopts every group attached so far (starts its connections).
  void AdoptAttached();
  // Drains groups being detached, lets go of those done; true if one finished now.
  bool ProgressDetaches();
  // Fails (next turn, not inline) an operation that cannot be dispatched.
  void FailLocally(Operation* operation, absl::Status status);
  void RebuildConnectionList();
  void ProcessCancels();
  void ArmWakeup();
  static void OnWakeup(IoCompletion* completion);
  // Close deadline passed: fail every connection of `group` not closed yet.
  void AbandonConnections(ConnectionGroup* group);
  // The body of Turn(); false when the loop finished.
  bool RunTurn(int64_t max_wait_ns);
  // Caller-driven mode, after a turn: signals the notify fd if the next turn has work.
  void NotifyIfWorkLeft();

  std::unique_ptr<Ring> ring_;
  std::vector<ConnectionGroup*> groups_;  // adopted, not finished
  std::vector<Connection*> connections_;  // of every adopted group, for the per-turn sweeps
  std::atomic<ConnectionGroup*> attached_{nullptr};  // Attach's stack
  std::atomic<uint32_t> detach_requests_{0};  // Detach calls so far
  uint32_t detaches_seen_ = 0;
  uint32_t closing_groups_ = 0;
  SubmissionInbox inbox_;
  // Cancel requests from any thread: a Treiber stack taken whole by the loop. Each message is
  // owned by the ring, so a canceller never waits and never shares memory with the loop.
  struct CancelMessage {
    Operation* operation;
    uint64_t submission;
    CancelMessage* next;
  };
  std::atomic<CancelMessage*> cancels_{nullptr};
  // Refused on this thread; completed next turn, not inline.
  OperationQueue local_failures_;
  FileDescriptor wakeup_fd_;
  uint64_t wakeup_value_ = 0;
  IoCompletion wakeup_completion_;
  std::atomic<bool> close_requested_{false};
  bool closing_ = false;
  bool finished_ = false;
  RingOptions options_;
  int64_t timeout_check_ns_ = 0;  // 0: no group has a request timeout
  BatchWindow batch_window_{0};
  std::atomic<uint64_t> wakeups_{0};
  std::thread::id thread_id_;
  bool in_turn_ = false;
  int64_t next_timeout_check_ns_ = 0;
  unsigned reaped_last_turn_ = 1;
  // Operations dispatched (or failed locally) since the connections last flushed: the next
  // turn has work even if the kernel has none.
  bool dispatched_since_flush_ = false;
  bool notify_enabled_ = false;
  bool notify_signalled_ = false;  // by this loop since the last drain
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RING_LOOP_H_
