// runtime/clock.h — the monotonic clock the rings use for deadlines (vDSO: no syscall), and
// the thread CPU clock the batching probe weighs modes with.
#ifndef NBDRING_RUNTIME_CLOCK_H_
#define NBDRING_RUNTIME_CLOCK_H_

#include <cstdint>
#include <ctime>
#include <limits>

#include "absl/time/time.h"

namespace nbdring {

inline int64_t MonotonicNanoseconds() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
}

// CPU time the calling thread has used, user and system (a syscall: read it rarely).
inline int64_t ThreadCpuNanoseconds() {
  timespec used;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &used);
  return int64_t{used.tv_sec} * 1000000000 + used.tv_nsec;
}

// `now_ns + duration_ns` without signed overflow: a duration of INT64_MAX (what
// absl::ToInt64Nanoseconds gives for absl::InfiniteDuration()) yields a deadline that never
// comes instead of one in the past.
inline int64_t DeadlineAfter(int64_t now_ns, int64_t duration_ns) {
  if (duration_ns > 0 && now_ns > std::numeric_limits<int64_t>::max() - duration_ns) {
    return std::numeric_limits<int64_t>::max();
  }
  return now_ns + duration_ns;
}

// A duration for the rings, where "no limit" (infinite, or zero when `zero_is_none`) is
// `none_ns`; negative durations count as zero.
inline int64_t RingNanoseconds(absl::Duration duration, bool zero_is_none, int64_t none_ns) {
  if (duration == absl::InfiniteDuration()) return none_ns;
  if (zero_is_none && duration <= absl::ZeroDuration()) return none_ns;
  const int64_t ns = absl::ToInt64Nanoseconds(duration);
  return ns > 0 ? ns : 0;
}

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_CLOCK_H_
