#include "runtime/ring_pool.h"

#include <sched.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/clock.h"

namespace nbdring {
Runtime::~Runtime() = default;

absl::StatusOr<std::shared_ptr<Runtime>> Runtime::Create(const RuntimeOptions& options) {
  // Sized for a few hundred connections per ring: a full submission queue is flushed early
  // (Ring::Prepare), and the completion queue (twice this) overflows into the kernel's list
  // rather than dropping completions.
  auto pool = RingPool::Create(options, /*ring_entries=*/1024);
  if (!pool.ok()) return pool.status();
  return std::shared_ptr<Runtime>(*std::move(pool));
}

absl::Status CheckRuntimeOptions(const RuntimeOptions& options) {
  if (options.threads < 0 || options.threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "threads must be 0 (caller-driven: Poll) or a number of ring threads up to 256, got ",
        options.threads));
  }
  if (options.threads == 0 && !options.ring_cpus.empty()) {
    return absl::InvalidArgumentError(
        "ring_cpus needs ring threads (threads >= 1): with threads = 0 the ring runs on the "
        "caller's thread, which the caller pins");
  }
  if (options.ring_cpus.empty()) return absl::OkStatus();
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) CPU_ZERO(&allowed);
  for (int cpu : options.ring_cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed)) {
      return absl::InvalidArgumentError(absl::StrCat("ring_cpus: CPU ", cpu,
                                                     " is not one this process may run on (",
                                                     CPU_COUNT(&allowed), " allowed)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RingPool>> RingPool::Create(
    const RuntimeOptions& options, unsigned ring_entries,
    const ReceiveBufferRingOptions& receive_buffers) {
  if (absl::Status checked = CheckRuntimeOptions(options); !checked.ok()) return checked;
  std::shared_ptr<RingPool> pool(new RingPool());
  RingOptions ring_options;
  ring_options.receive_buffers = receive_buffers;
  ring_options.entries = 16;
  while (ring_options.entries < ring_entries) ring_options.entries *= 2;
  ring_options.batch_delay_ns =
      RingNanoseconds(options.completion_batch_delay, /*zero_is_none=*/false, 0);
  ring_options.batch_min_in_flight = options.completion_batch_min_in_flight;
  if (options.threads == 0) {
    ring_options.notify_fd = true;
    auto loop = RingLoop::Create(ring_options);
    if (!loop.ok()) return loop.status();
    pool->polled_ = *std::move(loop);
    pool->loops_.push_back(pool->polled_.get());
  }
  for (int t = 0; t < options.threads; ++t) {
    ring_options.index = t;
    ring_options.cpu = options.ring_cpus.empty()
                           ? -1
                           : options.ring_cpus[static_cast<size_t>(t) % options.ring_cpus.size()];
    auto thread = RingThread::Start(ring_options);
    if (!thread.ok()) return thread.status();
    pool->loops_.push_back(&(*thread)->loop());
    pool->threads_.push_back(*std::move(thread));
  }
  pool->placed_.assign(pool->loops_.size(), 0);
  return pool;
}

RingPool::~RingPool() {
  // Every client let go of its groups before the last reference went: the loops are empty.
  Shutdown();
}

void RingPool::Shutdown() {
  for (const std::unique_ptr<RingThread>& thread : threads_) thread->loop().RequestClose();
  for (const std::unique_ptr<RingThread>& thread : threads_) thread->Join();
  if (polled_ != nullptr && polled_->on_this_thread() && !polled_->in_turn_on_this_thread()) {
    polled_->RequestClose();
    while (polled_->Turn(-1)) {
    }
  }
}

std::vector<RingLoop*> RingPool::Place(int count) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<RingLoop*> placed;
  for (int i = 0; i < count; ++i) {
    size_t best = 0;
    for (size_t l = 1; l < loops_.size(); ++l) {
      if (placed_[l] < placed_[best]) best = l;
    }
    ++placed_[best];
    placed.push_back(loops_[best]);
  }
  return placed;
}

void RingPool::Release(RingLoop* loop, int count) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t l = 0; l < loops_.size(); ++l) {
    if (loops_[l] == loop) placed_[l] -= count;
  }
}

int RingPool::connections() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int total = 0;
  for (int placed : placed_) total += placed;
  return total;
}

RingLoop* RingPool::CurrentLoop() const {
  for (RingLoop* loop : loops_) {
    if (loop->in_turn_on_this_thread()) return loop;
  }
  return nullptr;
}

std::vector<std::string> RingPool::notes() const {
  std::vector<std::string> notes;
  // Every ring of a process probes the same kernel: one note says which paths they took.
  notes.push_back(absl::StrCat("io_uring: ", loops_.front()->ring_description()));
  if (polled_ != nullptr) {
    notes.push_back("caller-driven: no threads; Poll() on the thread that created the ring "
                    "turns it");
  }
  return notes;
}

RuntimeStats RingPool::stats() const {
  RuntimeStats stats;
  for (const RingLoop* loop : loops_) {
    const ClientStats ring = loop->RingCounters();
    stats.enters += ring.enters;
    stats.sqes += ring.sqes;
    stats.cqes += ring.cqes;
    stats.wakeups += ring.wakeups;
  }
  return stats;
}

absl::Status RingPool::Poll(absl::Duration timeout) {
  if (polled_ == nullptr) {
    return absl::FailedPreconditionError(
        "Poll is for caller-driven rings (threads = 0); these have ring threads");
  }
  if (!polled_->on_this_thread()) {
    return absl::FailedPreconditionError(
        "Poll must run on the thread that created the ring (the ring is theirs)");
  }
  if (polled_->in_turn_on_this_thread()) {
    return absl::FailedPreconditionError("Poll called from one of its own callbacks");
  }
  int64_t timeout_ns = -1;
  if (timeout != absl::InfiniteDuration()) {
    timeout_ns = std::max<int64_t>(absl::ToInt64Nanoseconds(timeout), 0);
  }
  polled_->Turn(timeout_ns);
  return absl::OkStatus();
}

int RingPool::fd() {
  if (polled_ == nullptr || !polled_->on_this_thread()) return -1;
  return polled_->EnableNotifyFd();
}

}  // namespace nbdring
