// runtime/ring_loop.h — one io_uring and the Connections it drives, turned by one thread.
//
// A turn of the loop:
//   1. take every Operation other threads pushed into the inbox and dispatch it to the usable
//      connection with the fewest outstanding bytes;
//   2. let every connection stage what waits and start its send (one sendmsg per connection);
//   3. one io_uring_enter: submit all SQEs and wait for at least one completion (bounded by
//      the request-timeout check interval when timeouts are on, and by the caller's limit);
//   4. drain the completion queue, then run the handlers (replies are parsed, callbacks run;
//      callbacks that submit go straight to step 1's dispatch, no queue, no wakeup).
// Other threads reach the loop only through Submit() and Cancel(): a lock-free push and, when
// the inbox was empty, one eventfd write, whose completion (a read armed on the eventfd) ends
// the loop's wait.
//
// Who turns it: a RingThread (ClientOptions::threads >= 1) turns it for ever on a thread of
// its own; in caller-driven mode (threads = 0) the thread that created the loop turns it
// from Client::Poll(). Every turn runs on the creating thread (the ring is SINGLE_ISSUER).
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
#include "runtime/operation_queue.h"
#include "runtime/ring.h"
#include "runtime/socket.h"

namespace nbdring {

struct PendingConnection {
  FileDescriptor fd;
  std::unique_ptr<TlsSession> tls;  // null for plain text
  nbd::ExportInfo info;  // what this connection negotiated
  ConnectionOptions options;
};

struct RingOptions {
  int64_t timeout_check_ns = 0;  // 0: no request timeouts to check
  int64_t batch_delay_ns = 0;    // see ClientOptions::completion_batch_delay
  uint32_t batch_min_in_flight = 0;
  // From the close request until connections still busy are abandoned (their requests fail).
  int64_t close_timeout_ns = INT64_MAX;
  int index = 0;  // the thread is named "nbdring-ring-<index>"
  int cpu = -1;   // pinned to this CPU; -1: not pinned
  bool notify_fd = false;  // set up the notify fd (caller-driven mode)
};

class RingLoop {
 public:
  // Sets up the ring (the kernel probe) and the connections on the calling thread, which
  // becomes the only one allowed to call Turn(). `info` is the export as the client reports it.
  static absl::StatusOr<std::unique_ptr<RingLoop>> Create(
      const nbd::ExportInfo& info, std::vector<PendingConnection>* pending,
      const RingOptions& options);
  ~RingLoop();  // the loop must have finished (Turn returned false) or never run

  // One turn, waiting at most `max_wait_ns` for completions (-1: as long as the loop likes,
  // 0: not at all). False once a close has finished: every connection is closed and every
  // request completed; no further turn is needed.
  bool Turn(int64_t max_wait_ns);

  // Any thread. From a callback of this loop the operation is dispatched at once.
  void Submit(Operation* operation);
  // Any thread: cancel `operation` if this loop holds it on `submission`. Does not wait.
  void Cancel(Operation* operation, uint64_t submission);
  // Any thread. The loop drains, disconnects every connection and finishes; connections still
  // busy after RingOptions::close_timeout_ns are abandoned: their requests fail.
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
  int connections() const { return static_cast<int>(connections_.size()); }
  void AddStats(ClientStats* stats) const;
  // One entry per connection of this ring, ring counters repeated in each.
  void AppendConnectionStats(std::vector<std::pair<int, ClientStats>>* stats) const;

 private:
  RingLoop() = default;
  void Dispatch(Operation* operation);
  ClientStats RingCounters() const;  // enters, SQEs, CQEs, wakeups
  static void AddConnectionCounters(const Connection& connection, ClientStats* stats);
  void ProcessCancels();
  // From another thread, or from this thread outside a turn: make sure a turn comes.
  void Wake();
  void ArmWakeup();
  static void OnWakeup(IoCompletion* completion);
  bool AllClosed() const;
  // Close deadline passed: fail every connection not closed yet, with what is in flight.
  void AbandonConnections();
  // The body of Turn(); false when the loop finished.
  bool RunTurn(int64_t max_wait_ns);
  // Caller-driven mode, after a turn: signals the notify fd if the next turn has work.
  void NotifyIfWorkLeft();

  std::unique_ptr<Ring> ring_;
  std::vector<std::unique_ptr<Connection>> connections_;
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
  LatencyRecorder latency_;
  // Where Dispatch's search for the least loaded connection begins.
  size_t dispatch_start_ = 0;
  FileDescriptor wakeup_fd_;
  uint64_t wakeup_value_ = 0;
  IoCompletion wakeup_completion_;
  std::atomic<bool> close_requested_{false};
  bool closing_ = false;
  bool finished_ = false;
  int64_t close_deadline_ns_ = 0;
  bool abandoned_ = false;  // the close deadline passed and the connections were failed
  RingOptions options_;
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
