// runtime/socket.h — owning a socket's file descriptor, and the small helpers every opener
// of one shares. Connecting and negotiating live in runtime/resumable_negotiation.h (the step
// machine) and runtime/negotiation.h (its blocking driver).
//
// A socket is non-blocking while it is negotiated (the step machine never waits) and
// blocking again afterwards: from then on its I/O goes through io_uring, which waits for
// readiness itself (poll-armed) on a blocking socket, whereas on a non-blocking one it
// completes a recv or send with -EAGAIN and leaves the retry — a busy loop — to us.
#ifndef NBDRING_RUNTIME_SOCKET_H_
#define NBDRING_RUNTIME_SOCKET_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace nbdring {

// Owns a file descriptor; closes it on destruction.
class FileDescriptor {
 public:
  FileDescriptor() = default;
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(FileDescriptor&& other) noexcept : fd_(other.release()) {}
  FileDescriptor& operator=(FileDescriptor&& other) noexcept;
  ~FileDescriptor();
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// Sets or clears O_NONBLOCK on `fd`: handshakes wait with poll() on a non-blocking socket
// (ConnectSocket's too), and the ring then takes it blocking.
absl::Status SetNonBlocking(int fd, bool non_blocking);

// `what`: strerror(error_number), with a code a caller can act on: kUnavailable for a peer
// that is not there or went away (worth reconnecting), kDeadlineExceeded, kPermissionDenied,
// else kInternal.
absl::Status ErrnoError(absl::string_view what, int error_number);

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_SOCKET_H_
