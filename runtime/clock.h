// runtime/clock.h — the monotonic clock the rings use for deadlines (vDSO: no syscall).
#ifndef NBDRING_RUNTIME_CLOCK_H_
#define NBDRING_RUNTIME_CLOCK_H_

#include <cstdint>
#include <ctime>

namespace nbdring {

inline int64_t MonotonicNanoseconds() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
}

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_CLOCK_H_
