// runtime/ring_thread.h — a thread that owns one Ring and the Connections it drives.
//
// The loop, once per turn:
//   1. take every Operation other threads pushed into the inbox and dispatch it to the usable
//      connection with the fewest outstanding bytes;
//   2. let every connection stage what waits and start its send (one sendmsg per connection);
//   3. one io_uring_enter: submit all SQEs and wait for at least one completion (bounded by
//      the request-timeout check interval when timeouts are on);
//   4. drain the completion queue, then run the handlers (replies are parsed, callbacks run;
//      callbacks that submit go straight to step 1's dispatch, no queue, no wakeup).
// Other threads reach the loop only through Submit(): a lock-free push and, when the inbox was
// empty, one eventfd write, whose completion (a read armed on the eventfd) wakes the loop.
#ifndef NBDRING_RUNTIME_RING_THREAD_H_
#define NBDRING_RUNTIME_RING_THREAD_H_

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
};

class RingThread {
 public:
  // Starts the thread, which sets up its ring (the probe) and connections; returns once the
  // ring is running or with the probe's error. `info` is the export as the client reports it.
  static absl::StatusOr<std::unique_ptr<RingThread>> Start(
      const nbd::ExportInfo& info, std::vector<PendingConnection> connections,
      const RingOptions& options);
  ~RingThread();  // joins (Close must have been requested)

  // Any thread. From this ring's own thread the operation is dispatched at once.
  void Submit(Operation* operation);
  // Any thread: cancel `operation` if this ring holds it on `submission`. Does not wait.
  void Cancel(Operation* operation, uint64_t submission);
  // Asks the loop to drain, disconnect every connection and exit; does not wait. Connections
  // still busy after RingOptions::close_timeout_ns are abandoned: their requests fail.
  void RequestClose();
  void Join();

  bool on_this_thread() const;
  // How the ring was set up (Ring::setup_description), for Client::notes().
  const std::string& ring_description() const { return ring_->setup_description(); }
  int connections() const { return static_cast<int>(connections_.size()); }
  void AddStats(ClientStats* stats) const;
  // One entry per connection of this ring, ring counters repeated in each.
  void AppendConnectionStats(std::vector<std::pair<int, ClientStats>>* stats) const;

 private:
  RingThread() = default;
  void Run(const nbd::ExportInfo* info, std::vector<PendingConnection>* pending,
           std::atomic<int>* started, absl::Status* start_status);
  void Loop();
  void Dispatch(Operation* operation);
  ClientStats RingCounters() const;  // enters, SQEs, CQEs, wakeups
  static void AddConnectionCounters(const Connection& connection, ClientStats* stats);
  void ProcessCancels();
  void Wake();
  void ArmWakeup();
  static void OnWakeup(IoCompletion* completion);
  bool AllClosed() const;
  // Close deadline passed: fail every connection not closed yet, with what is in flight.
  void AbandonConnections();

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
  OperationQueue local_failures_;
  LatencyRecorder latency_;
  size_t dispatch_start_ = 0;  // where Dispatch's search for the least loaded connection begins  // refused on this thread; completed next turn, not inline
  FileDescriptor wakeup_fd_;
  uint64_t wakeup_value_ = 0;
  IoCompletion wakeup_completion_;
  std::atomic<bool> close_requested_{false};
  bool closing_ = false;
  int64_t close_deadline_ns_ = 0;
  bool abandoned_ = false;  // the close deadline passed and the connections were failed
  RingOptions options_;
  BatchWindow batch_window_{0};
  std::atomic<uint64_t> wakeups_{0};
  std::thread thread_;
  std::thread::id thread_id_;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RING_THREAD_H_
