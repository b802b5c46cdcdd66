// runtime/counter.h — statistics counters with one writer (a ring thread) and any readers.
//
// A plain load+store instead of fetch_add: only the owning thread writes, so there is no
// read-modify-write race to guard against, and the hot path avoids a locked instruction.
#ifndef NBDRING_RUNTIME_COUNTER_H_
#define NBDRING_RUNTIME_COUNTER_H_

#include <atomic>
#include <cstdint>

namespace nbdring {

inline void Increment(std::atomic<uint64_t>& counter, uint64_t by = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_COUNTER_H_
