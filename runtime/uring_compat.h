// runtime/uring_compat.h — io_uring features newer than the headers nbdring builds against
// (Debian 12: liburing 2.3 and linux-libc-dev 6.1). Each is defined here once, with the
// kernel version and the feature bit that gates it; callers check the bit (Ring::Create does)
// before using one, and fall back when it is missing.
//
//   feature           kernel  gate                       used for
//   min_wait_usec     6.12    IORING_FEAT_MIN_TIMEOUT    completion batching in the kernel:
//                                                        "wait min_wait for more completions,
//                                                        then return once there is one"
//   buf_ring          5.19    io_uring_register_buf_ring receive buffers shared by a ring's
//                             succeeding (probe)         connections (receive_buffer_ring.h);
//                                                        liburing 2.3 has the calls, so
//                                                        nothing is defined here
//
// Every probed feature can also be turned off from outside, to run and test the fallback on
// a kernel that has it: NBDRING_DISABLE_FEATURES is a comma-separated list of names (see
// DisabledByEnvironment). Client::notes() says which path each ring took.
#ifndef NBDRING_RUNTIME_URING_COMPAT_H_
#define NBDRING_RUNTIME_URING_COMPAT_H_

#include <liburing.h>

#include <cstdint>
#include <string_view>

namespace nbdring::uring_compat {

// IORING_FEAT_MIN_TIMEOUT (Linux 6.12): io_uring_enter with IORING_ENTER_EXT_ARG reads
// min_wait_usec from the field 6.1's uapi calls `pad`.
inline constexpr uint32_t kFeatMinTimeout = 1u << 15;

// struct io_uring_getevents_arg as 6.12 defines it.
struct GetEventsArg {
  uint64_t sigmask = 0;
  uint32_t sigmask_sz = 0;
  uint32_t min_wait_usec = 0;
  uint64_t ts = 0;  // address of a __kernel_timespec, relative
};
static_assert(sizeof(GetEventsArg) == sizeof(io_uring_getevents_arg),
              "GetEventsArg must match the kernel's io_uring_getevents_arg");

// Makes the SQEs taken with io_uring_get_sqe visible to the kernel (the SQ tail), as
// liburing does before its own io_uring_enter; returns how many the kernel has not consumed
// (io_uring_enter's to_submit). Not for SQPOLL rings.
unsigned FlushSubmissionQueue(io_uring* ring);

// One io_uring_enter: submits `to_submit` SQEs and waits until `wait_nr` completions are
// there, or — once `min_wait_usec` has passed — until at least one is, or until `timeout`
// (relative) passes. `timeout` is required: without a general timeout the kernel ends the
// wait when min_wait passes even with no completion. Only on rings whose features include
// kFeatMinTimeout. Returns the syscall's result (submitted count) or -errno.
int SubmitAndWaitMinTimeout(io_uring* ring, unsigned to_submit, unsigned wait_nr,
                            const __kernel_timespec& timeout, uint32_t min_wait_usec);

// True when the environment variable NBDRING_DISABLE_FEATURES (comma-separated, e.g.
// "min_wait,defer_taskrun,buf_ring") names `feature`.
bool DisabledByEnvironment(std::string_view feature);

}  // namespace nbdring::uring_compat

#endif  // NBDRING_RUNTIME_URING_COMPAT_H_
