// runtime/ring_pool.h — the rings behind an nbdring::Runtime: its ring threads (or, caller-
// driven, the one loop the creating thread turns), and where each new connection goes.
//
// A Client without a runtime makes a private pool sized for itself (its `threads`, at most one
// per connection, rings sized for its connections); a shared Runtime's pool starts its rings
// empty and sized for many connections. Either way clients attach ConnectionGroups to the
// pool's loops and detach them on Close; the pool stops its rings when it is destroyed, which
// happens only after every client holding it has let go.
#ifndef NBDRING_RUNTIME_RING_POOL_H_
#define NBDRING_RUNTIME_RING_POOL_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nbdring/runtime.h"
#include "runtime/ring_loop.h"
#include "runtime/ring_thread.h"

namespace nbdring {

class RingPool final : public Runtime {
 public:
  // `ring_entries`: submission queue size of each ring (see RingOptions::entries);
  // `receive_buffers`: each ring's shared receive buffers (tests make them tiny).
  static absl::StatusOr<std::shared_ptr<RingPool>> Create(
      const RuntimeOptions& options, unsigned ring_entries,
      const ReceiveBufferRingOptions& receive_buffers = {});
  ~RingPool() override;
  // Stops the rings now: their loops finish and the threads end (caller-driven: on the owner
  // thread, the loop is turned until it finishes). The loop objects stay, idle, until the
  // pool is destroyed, so stats can still read their counters. For private pools, at Close.
  void Shutdown();

  // The loop each of `count` new connections goes to: the one with the fewest connections,
  // counted as placed until Release.
  std::vector<RingLoop*> Place(int count);
  void Release(RingLoop* loop, int count);

  const std::vector<RingLoop*>& loops() const { return loops_; }
  // The loop whose turn runs on the calling thread (inside a callback), or nullptr.
  RingLoop* CurrentLoop() const;
  // Caller-driven: the loop, whoever asks; nullptr with ring threads.
  RingLoop* polled() const { return polled_.get(); }

  int threads() const override { return static_cast<int>(threads_.size()); }
  int connections() const override;
  std::vector<std::string> notes() const override;
  RuntimeStats stats() const override;
  absl::Status Poll(absl::Duration timeout) override;
  int fd() override;

 private:
  RingPool() = default;

  std::vector<std::unique_ptr<RingThread>> threads_;
  std::unique_ptr<RingLoop> polled_;
  std::vector<RingLoop*> loops_;
  mutable std::mutex mutex_;
  std::vector<int> placed_;  // connections per loop, guarded by mutex_
};

// InvalidArgument naming what is wrong: threads out of range, ring_cpus without threads or
// naming a CPU this process may not use.
absl::Status CheckRuntimeOptions(const RuntimeOptions& options);

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RING_POOL_H_
