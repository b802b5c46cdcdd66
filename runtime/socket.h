// runtime/socket.h — opening a connection and negotiating on it, before the ring takes over.
//
// Connect and handshake (TLS included) use plain non-blocking sockets and poll() against one
// deadline: they run once per connection on the caller's thread, off the hot path, and a
// server that stops answering mid-handshake gets a DeadlineExceeded error naming the stage,
// not a hang. Every wait also watches an optional `abort_fd` (an eventfd): once it is
// readable the call returns CancelledError at once, which is how Close() stops a reconnect
// attempt.
//
// The socket RunHandshake leaves behind is blocking again: from then on its I/O goes through
// io_uring, which waits for readiness itself (poll-armed) on a blocking socket, whereas on a
// non-blocking one it completes a recv or send with -EAGAIN and leaves the retry — a busy
// loop — to us.
#ifndef NBDRING_RUNTIME_SOCKET_H_
#define NBDRING_RUNTIME_SOCKET_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nbd/handshake.h"
#include "nbd/uri.h"
#include "runtime/tls_context.h"
#include "runtime/tls_session.h"

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

// Connects to `address` (TCP with TCP_NODELAY, Unix, or vsock). Errors name the address.
absl::StatusOr<FileDescriptor> ConnectTo(const nbd::NbdUri& address, absl::Time deadline,
                                         int abort_fd = -1);

// Drives `handshake` over `fd` until it is done (sending any final output such as
// NBD_OPT_ABORT). Reads only as many bytes as the handshake asks for, so nothing of the
// transmission phase is consumed. On success the socket is switched to blocking mode.
//
// When the server acknowledges NBD_OPT_STARTTLS (the handshake asks for it when its options
// allow TLS), a session made from `tls` is established on the socket within the same
// deadline, and the rest of the negotiation runs inside it; on success `*session` holds that
// session (null when TLS was not started), and the transmission phase must go through it.
absl::Status RunHandshake(int fd, nbd::Handshake& handshake, absl::Time deadline,
                          int abort_fd = -1,
                          const std::shared_ptr<const TlsContext>& tls = nullptr,
                          std::unique_ptr<TlsSession>* session = nullptr);

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_SOCKET_H_
