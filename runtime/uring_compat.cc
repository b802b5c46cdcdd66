#include "runtime/uring_compat.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"

namespace nbdring::uring_compat {

unsigned FlushSubmissionQueue(io_uring* ring) {
  io_uring_sq& sq = ring->sq;
  const unsigned tail = sq.sqe_tail;
  if (sq.sqe_head != tail) {
    sq.sqe_head = tail;
    __atomic_store_n(sq.ktail, tail, __ATOMIC_RELEASE);
  }
  return tail - __atomic_load_n(sq.khead, __ATOMIC_ACQUIRE);
}

int SubmitAndWaitMinTimeout(io_uring* ring, unsigned to_submit, unsigned wait_nr,
                            const __kernel_timespec& timeout, uint32_t min_wait_usec) {
  GetEventsArg arg;
  arg.min_wait_usec = min_wait_usec;
  arg.ts = reinterpret_cast<uint64_t>(&timeout);
  const long result = syscall(__NR_io_uring_enter, ring->ring_fd, to_submit, wait_nr,
                              IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof(arg));
  return result < 0 ? -errno : static_cast<int>(result);
}

bool DisabledByEnvironment(std::string_view feature) {
  const char* disabled = std::getenv("NBDRING_DISABLE_FEATURES");
  if (disabled == nullptr) return false;
  for (absl::string_view name : absl::StrSplit(disabled, ',', absl::SkipWhitespace())) {
    name = absl::StripAsciiWhitespace(name);
    if (std::string_view(name.data(), name.size()) == feature) return true;
  }
  return false;
}

}  // namespace nbdring::uring_compat
