// runtime/ring_thread.h — a thread of its own that turns one RingLoop until it finishes.
//
// The threaded mode (ClientOptions::threads >= 1). The thread is named "nbdring-ring-N",
// optionally pinned to a CPU, and creates its loop itself: the ring belongs to the thread
// that sets it up (SINGLE_ISSUER). Everything else — submitting, cancelling, stats — goes
// through loop(), from any thread.
#ifndef NBDRING_RUNTIME_RING_THREAD_H_
#define NBDRING_RUNTIME_RING_THREAD_H_

#include <atomic>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "runtime/ring_loop.h"

namespace nbdring {

class RingThread {
 public:
  // Starts the thread, which sets up its ring (the probe); returns once the ring is running
  // or with the probe's error. Connections come later, in groups (RingLoop::Attach).
  static absl::StatusOr<std::unique_ptr<RingThread>> Start(const RingOptions& options);
  ~RingThread();  // requests close and joins

  RingLoop& loop() { return *loop_; }
  const RingLoop& loop() const { return *loop_; }
  void Join();

 private:
  RingThread() = default;
  void Run(const RingOptions* options, std::atomic<int>* started, absl::Status* start_status);

  std::unique_ptr<RingLoop> loop_;
  std::thread thread_;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RING_THREAD_H_
