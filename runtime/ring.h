// runtime/ring.h — one io_uring, owned and used by one thread.
//
// Completions are caller-owned IoCompletion objects whose address is the SQE's user_data
// (the TigerBeetle pattern): no lookup table, no allocation per operation. Reap() drains the
// whole completion queue into a list first and only then runs the handlers, so a handler that
// queues new SQEs never re-enters the reaping loop and CQ entries are released early.
//
// Create() probes the kernel and picks the best set-up flags it accepts: SINGLE_ISSUER +
// DEFER_TASKRUN (completion work runs only when this thread enters the kernel, which is when
// it wants it) + COOP_TASKRUN, falling back to plain rings on older kernels. When io_uring is
// not available at all the error says why (sysctl, seccomp/container policy, old kernel,
// memlock limit) and what to do. It must be called on the thread that will use the ring.
//
// With `notify_fd`, the ring also gets an eventfd registered with the kernel
// (io_uring_register_eventfd, Linux 5.2) that it signals when it posts completions or — with
// DEFER_TASKRUN or COOP_TASKRUN — queues task work for this thread; IORING_SETUP_TASKRUN_FLAG
// makes the latter visible (HasPendingWork). It starts switched off (SetNotify).
#ifndef NBDRING_RUNTIME_RING_H_
#define NBDRING_RUNTIME_RING_H_

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/counter.h"
#include "runtime/receive_buffer_ring.h"
#include "runtime/socket.h"

namespace nbdring {

struct IoCompletion {
  using Handler = void (*)(IoCompletion* completion);
  Handler handler = nullptr;
  void* owner = nullptr;
  int32_t result = 0;    // the CQE's res: bytes or -errno
  uint32_t flags = 0;    // the CQE's flags
  IoCompletion* next_ready = nullptr;
};

// Counters a ring keeps; written by the ring's thread only, read by anyone.
struct RingCounters {
  std::atomic<uint64_t> enters{0};
  std::atomic<uint64_t> sqes{0};
  std::atomic<uint64_t> cqes{0};
  // Receive memory. Private receive buffers the ring's connections hold now, and their bytes
  // (gauges: connections change them on this thread, and when destroyed, on any).
  std::atomic<int64_t> private_receive_buffers{0};
  std::atomic<int64_t> private_receive_bytes{0};
  // Recvs that found the shared receive buffer ring empty (each took a private buffer or
  // made the ring grow).
  std::atomic<uint64_t> shared_receive_exhausted{0};
};

class Ring {
 public:
  // `receive_buffers`: the shared receive buffer ring to register (see receive_buffer_ring.h);
  // without the feature (or with NBDRING_DISABLE_FEATURES=buf_ring) there is none.
  static absl::StatusOr<std::unique_ptr<Ring>> Create(
      unsigned entries, bool notify_fd = false,
      const ReceiveBufferRingOptions& receive_buffers = {});
  ~Ring();

  // An SQE whose user_data is `completion`. Submits queued SQEs first when the submission
  // queue is full, so it never fails while the kernel accepts submissions.
  io_uring_sqe* Prepare(IoCompletion* completion);

  // Submits everything queued and waits until `wait_count` completions are there or
  // `timeout_ns` (relative; negative = no limit) passes. One io_uring_enter.
  void SubmitAndWait(unsigned wait_count, int64_t timeout_ns);
  // The same, except that once `min_wait_ns` has passed one completion is enough; with none
  // by then it keeps sleeping until the first (or `timeout_ns`). Only when min_wait() is true.
  void SubmitAndWaitMin(unsigned wait_count, int64_t min_wait_ns, int64_t timeout_ns);
  // The kernel batches completions itself (IORING_FEAT_MIN_TIMEOUT, Linux 6.12+), unless
  // NBDRING_DISABLE_FEATURES contains "min_wait".
  bool min_wait() const { return min_wait_; }
  // Submits without waiting (used before blocking elsewhere).
  void Submit();
  // Drains the completion queue, then runs each handler. Returns how many ran.
  unsigned Reap();

  unsigned pending_sqes() const { return queued_; }

  // The notify eventfd (see the top of this file); -1 when the ring has none.
  int notify_fd() const { return notify_fd_.get(); }
  // Switches the kernel's signals of the notify fd on or off (IORING_CQ_EVENTFD_DISABLED);
  // switching on is ordered before HasPendingWork's loads, so that check sees what came before.
  void SetNotify(bool enabled);
  void DrainNotify();   // resets the notify fd's count
  void SignalNotify();  // makes the notify fd readable
  // Completions are waiting to be reaped, or the kernel holds task work for this thread.
  bool HasPendingWork();
  const RingCounters& counters() const { return counters_; }
  RingCounters& counters() { return counters_; }
  // Receive buffers the ring's plain-text connections share; null when the kernel lacks
  // provided buffer rings (Linux 5.19) or they are disabled.
  ReceiveBufferRing* receive_buffers() { return receive_buffers_.get(); }
  // Describes the set-up the probe chose and the waits it uses, e.g.
  // "SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL, completion batching in the kernel (min_wait),
  // receive buffers shared by the ring's connections (buf_ring)".
  const std::string& setup_description() const { return setup_description_; }

 private:
  Ring() = default;
  void AccountSubmission();
  absl::Status SetUpNotifyFd();
  // Registers the shared receive buffer ring if the kernel has it; says which path was taken.
  std::string SetUpReceiveBuffers(const ReceiveBufferRingOptions& options);
  io_uring ring_{};
  bool initialised_ = false;
  bool min_wait_ = false;
  unsigned queued_ = 0;
  RingCounters counters_;
  std::string setup_description_;
  FileDescriptor notify_fd_;
  std::unique_ptr<ReceiveBufferRing> receive_buffers_;  // unregistered before the ring exits
};

// Turns a negative errno from io_uring_queue_init into an explanation (exposed for tests).
absl::Status DescribeRingSetupFailure(int error_number);

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RING_H_
