#include "runtime/ring.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <sys/eventfd.h>
#include <unistd.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/uring_compat.h"

namespace nbdring {
namespace {

std::string ReadSysctl(const char* path) {
  std::ifstream in(path);
  std::string value;
  if (in) std::getline(in, value);
  return value;
}

}  // namespace

absl::Status DescribeRingSetupFailure(int error_number) {
  std::string disabled = ReadSysctl("/proc/sys/kernel/io_uring_disabled");
  switch (error_number) {
    case ENOSYS:
      return absl::UnavailableError(
          "io_uring is not available: the kernel lacks it (needs Linux 5.19 or later) or a "
          "seccomp filter (container runtime default profile) blocks io_uring_setup; allow the "
          "io_uring_setup/io_uring_enter/io_uring_register syscalls");
    case EPERM:
      if (!disabled.empty() && disabled != "0") {
        return absl::PermissionDeniedError(absl::StrCat(
            "io_uring is disabled by sysctl kernel.io_uring_disabled=", disabled,
            (disabled == "1" ? " (only members of kernel.io_uring_group may use it)" : ""),
            "; run 'sysctl -w kernel.io_uring_disabled=0' as root"));
      }
      return absl::PermissionDeniedError(
          "io_uring_setup was refused (EPERM): a seccomp or LSM policy forbids io_uring here; "
          "allow the io_uring syscalls for this process");
    case ENOMEM:
      return absl::ResourceExhaustedError(
          "io_uring_setup failed with ENOMEM: the locked-memory limit is too low for the ring "
          "(raise 'ulimit -l' or use a kernel >= 5.12 that accounts rings differently)");
    default:
      return absl::InternalError(
          absl::StrCat("io_uring_setup failed: ", std::strerror(error_number)));
  }
}

absl::StatusOr<std::unique_ptr<Ring>> Ring::Create(
    unsigned entries, bool notify_fd, const ReceiveBufferRingOptions& receive_buffers) {
  std::unique_ptr<Ring> ring(new Ring());
  struct Attempt {
    unsigned flags;
    const char* description;
  };
  // Best first. DEFER_TASKRUN needs SINGLE_ISSUER (6.1+); COOP_TASKRUN alone is 5.19+.
  // NBDRING_DISABLE_FEATURES=defer_taskrun starts at the second (to test that path).
  const bool defer_taskrun = !uring_compat::DisabledByEnvironment("defer_taskrun");
  const Attempt attempts[] = {
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
       "SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL"},
      {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL, "COOP_TASKRUN|SUBMIT_ALL"},
      {0, "plain"},
  };
  int result = 0;
  for (const Attempt& attempt : attempts) {
    if (!defer_taskrun && (attempt.flags & IORING_SETUP_DEFER_TASKRUN) != 0) continue;
    io_uring_params params{};
    params.flags = attempt.flags;
    // TASKRUN_FLAG (5.19) needs COOP_TASKRUN or DEFER_TASKRUN; a plain ring runs task work
    // on every return to user space, where HasPendingWork sees its completions instead.
    if (notify_fd && attempt.flags != 0) params.flags |= IORING_SETUP_TASKRUN_FLAG;
    result = io_uring_queue_init_params(entries, &ring->ring_, &params);
    if (result == 0) {
      ring->initialised_ = true;
      if ((params.features & IORING_FEAT_EXT_ARG) == 0) {
        io_uring_queue_exit(&ring->ring_);
        return absl::UnavailableError(
            "io_uring lacks IORING_FEAT_EXT_ARG (timed waits); nbdring needs Linux 5.11+");
      }
      const char* waits;
      if ((params.features & uring_compat::kFeatMinTimeout) == 0) {
        waits = "completion batching by timed waits (the kernel lacks IORING_FEAT_MIN_TIMEOUT, "
                "Linux 6.12)";
      } else if (uring_compat::DisabledByEnvironment("min_wait")) {
        waits = "completion batching by timed waits (min_wait disabled by "
                "NBDRING_DISABLE_FEATURES)";
      } else {
        ring->min_wait_ = true;
        waits = "completion batching in the kernel (min_wait)";
      }
      if (notify_fd) {
        absl::Status notify = ring->SetUpNotifyFd();
        if (!notify.ok()) return notify;
      }
      ring->setup_description_ = absl::StrCat(
          attempt.description, defer_taskrun ? "" : " (defer_taskrun disabled by "
                                                    "NBDRING_DISABLE_FEATURES)",
          ", ", waits, ", ", ring->SetUpReceiveBuffers(receive_buffers));
      return ring;
    }
    // EINVAL means "flag not supported": try the next set. Anything else is final.
    if (result != -EINVAL) break;
  }
  return DescribeRingSetupFailure(-result);
}

std::string Ring::SetUpReceiveBuffers(const ReceiveBufferRingOptions& options) {
  if (!options.enabled) return "a private receive buffer per connection (shared ones off)";
  if (uring_compat::DisabledByEnvironment("buf_ring")) {
    return "a private receive buffer per connection (buf_ring disabled by "
           "NBDRING_DISABLE_FEATURES)";
  }
  auto registered = ReceiveBufferRing::Register(&ring_, options);
  if (!registered.ok()) {
    // Any refusal only costs memory: connections keep private buffers, as before 5.19.
    return absl::StrCat("a private receive buffer per connection (no provided buffer ring, "
                        "Linux 5.19: ",
                        registered.status().message(), ")");
  }
  receive_buffers_ = *std::move(registered);
  return absl::StrCat("receive buffers shared by the ring's connections (buf_ring, up to ",
                      options.max_buffers, " of ", options.buffer_bytes / 1024, " KiB)");
}

absl::Status Ring::SetUpNotifyFd() {
  notify_fd_ = FileDescriptor(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (notify_fd_.get() < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("eventfd for the notify fd: ", std::strerror(errno)));
  }
  if (int result = io_uring_register_eventfd(&ring_, notify_fd_.get()); result < 0) {
    return absl::InternalError(absl::StrCat(
        "io_uring_register_eventfd (the notify fd, Linux 5.2+): ", std::strerror(-result)));
  }
  SetNotify(false);
  return absl::OkStatus();
}

void Ring::SetNotify(bool enabled) {
  // IORING_CQ_EVENTFD_DISABLED (Linux 5.8) is a flag in the shared CQ ring, which only this
  // thread writes. Sequentially consistent, like the loads in HasPendingWork: switching on
  // and then looking for work must not be reordered (the kernel posts, then reads the flag).
  unsigned flags = __atomic_load_n(ring_.cq.kflags, __ATOMIC_RELAXED);
  flags = enabled ? flags & ~IORING_CQ_EVENTFD_DISABLED : flags | IORING_CQ_EVENTFD_DISABLED;
  __atomic_store_n(ring_.cq.kflags, flags, __ATOMIC_SEQ_CST);
}

void Ring::DrainNotify() {
  uint64_t count;
  [[maybe_unused]] ssize_t drained = read(notify_fd_.get(), &count, sizeof(count));
}

void Ring::SignalNotify() {
  uint64_t one = 1;
  // A failed write can only mean the counter is saturated, which is readable already.
  [[maybe_unused]] ssize_t written = write(notify_fd_.get(), &one, sizeof(one));
}

bool Ring::HasPendingWork() {
  const unsigned sq_flags = __atomic_load_n(ring_.sq.kflags, __ATOMIC_SEQ_CST);
  const unsigned cq_tail = __atomic_load_n(ring_.cq.ktail, __ATOMIC_SEQ_CST);
  return cq_tail != *ring_.cq.khead ||
         (sq_flags & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
}

Ring::~Ring() {
  receive_buffers_.reset();  // unregisters from the ring, which must still exist
  if (initialised_) io_uring_queue_exit(&ring_);
}

io_uring_sqe* Ring::Prepare(IoCompletion* completion) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe == nullptr) {
    Submit();
    sqe = io_uring_get_sqe(&ring_);
  }
  // With SUBMIT_ALL and an SQ sized above the connections' needs this cannot stay null; the
  // loop guards against a kernel that accepted only part of a submission.
  while (sqe == nullptr) {
    Submit();
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, completion);
  ++queued_;
  return sqe;
}

void Ring::Submit() {
  if (queued_ == 0) return;
  io_uring_submit(&ring_);
  AccountSubmission();
}

void Ring::SubmitAndWait(unsigned wait_count, int64_t timeout_ns) {
  io_uring_cqe* cqe = nullptr;
  if (timeout_ns >= 0) {
    __kernel_timespec timeout{};
    timeout.tv_sec = timeout_ns / 1000000000;
    timeout.tv_nsec = timeout_ns % 1000000000;
    io_uring_submit_and_wait_timeout(&ring_, &cqe, wait_count, &timeout, nullptr);
  } else {
    io_uring_submit_and_wait(&ring_, wait_count);
  }
  AccountSubmission();
}

void Ring::SubmitAndWaitMin(unsigned wait_count, int64_t min_wait_ns, int64_t timeout_ns) {
  // A general timeout is required (see uring_compat.h); a ring with nothing else to wake for
  // looks again after a second.
  if (timeout_ns < 0) timeout_ns = 1'000'000'000;
  __kernel_timespec timeout{};
  timeout.tv_sec = timeout_ns / 1000000000;
  timeout.tv_nsec = timeout_ns % 1000000000;
  const uint32_t min_wait_usec = static_cast<uint32_t>(std::max<int64_t>(min_wait_ns / 1000, 1));
  const unsigned to_submit = uring_compat::FlushSubmissionQueue(&ring_);
  // -ETIME (timeout) and -EINTR are ordinary ends of a wait; the loop reaps what is there.
  uring_compat::SubmitAndWaitMinTimeout(&ring_, to_submit, wait_count, timeout, min_wait_usec);
  AccountSubmission();
}

void Ring::AccountSubmission() {
  // Counted as one io_uring_enter per call: liburing may skip the syscall when nothing is
  // queued and a completion is already visible, so this errs on the side of more enters.
  Increment(counters_.enters, 1);
  unsigned left = io_uring_sq_ready(&ring_);
  if (left < queued_) Increment(counters_.sqes, queued_ - left);
  queued_ = left;
}

unsigned Ring::Reap() {
  IoCompletion* ready_head = nullptr;
  IoCompletion** ready_tail = &ready_head;
  unsigned count = 0;
  unsigned head;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    auto* completion = static_cast<IoCompletion*>(io_uring_cqe_get_data(cqe));
    ++count;
    if (completion == nullptr) continue;  // an SQE nobody waits for (e.g. a cancel)
    completion->result = cqe->res;
    completion->flags = cqe->flags;
    completion->next_ready = nullptr;
    *ready_tail = completion;
    ready_tail = &completion->next_ready;
  }
  io_uring_cq_advance(&ring_, count);
  Increment(counters_.cqes, count);
  for (IoCompletion* completion = ready_head; completion != nullptr;) {
    IoCompletion* next = completion->next_ready;  // the handler may re-arm `completion`
    completion->handler(completion);
    completion = next;
  }
  return count;
}

}  // namespace nbdring
