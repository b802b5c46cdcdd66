#include "runtime/socket.h"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace nbdring {
namespace {

absl::Status ErrnoError(absl::string_view what, int error_number) {
  std::string message = absl::StrCat(what, ": ", std::strerror(error_number));
  switch (error_number) {
    case ECONNREFUSED:
    case ENOENT:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ECONNRESET:
    case EPIPE:
      return absl::UnavailableError(message);
    case ETIMEDOUT:
      return absl::DeadlineExceededError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

// poll()'s timeout until `deadline`: -1 (no limit) for an infinite deadline, else at most
// 1000 s per call (the callers loop).
int RemainingMilliseconds(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  if (left >= absl::Seconds(1000)) return 1000000;
  return static_cast<int>(absl::ToInt64Milliseconds(left) + 1);
}

// Waits until `fd` is ready for `events`. DeadlineExceeded names `stage`; CancelledError when
// `abort_fd` (if >= 0) became readable first.
absl::Status WaitFor(int fd, short events, absl::Time deadline, absl::string_view stage,
                     int abort_fd) {
  while (true) {
    pollfd poll_fds[2] = {{fd, events, 0}, {abort_fd, POLLIN, 0}};
    int ready = poll(poll_fds, abort_fd >= 0 ? 2 : 1, RemainingMilliseconds(deadline));
    if (ready > 0) {
      if (abort_fd >= 0 && poll_fds[1].revents != 0) {
        return absl::CancelledError(absl::StrCat("aborted while ", stage));
      }
      return absl::OkStatus();
    }
    if (ready == 0) {
      if (absl::Now() < deadline) continue;  // a slice of a long wait ended
      return absl::DeadlineExceededError(absl::StrCat("timed out ", stage));
    }
    if (errno != EINTR) return ErrnoError(absl::StrCat("poll while ", stage), errno);
  }
}

absl::StatusOr<FileDescriptor> ConnectAddress(int family, const sockaddr* address,
                                              socklen_t length, absl::string_view name,
                                              absl::Time deadline, int abort_fd) {
  FileDescriptor fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return ErrnoError(absl::StrCat("socket for ", name), errno);
  if (connect(fd.get(), address, length) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN) {
      return ErrnoError(absl::StrCat("connect to ", name), errno);
    }
    absl::Status ready =
        WaitFor(fd.get(), POLLOUT, deadline, absl::StrCat("connecting to ", name), abort_fd);
    if (!ready.ok()) return ready;
    int error = 0;
    socklen_t error_length = sizeof(error);
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &error_length);
    if (error != 0) return ErrnoError(absl::StrCat("connect to ", name), error);
  }
  if (family == AF_INET || family == AF_INET6) {
    // Requests are small and already batched by the ring: Nagle would only add latency.
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return fd;
}

// io_uring then waits for readiness itself (see socket.h).
absl::Status MakeBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return ErrnoError("making the socket blocking for io_uring", errno);
  }
  return absl::OkStatus();
}

}  // namespace

FileDescriptor& FileDescriptor::operator=(FileDescriptor&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.release();
  }
  return *this;
}

FileDescriptor::~FileDescriptor() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<FileDescriptor> ConnectTo(const nbd::NbdUri& address, absl::Time deadline,
                                         int abort_fd) {
  if (address.tls) {
    return absl::UnimplementedError(absl::StrCat(
        "TLS (", address.ToString(), ") is not supported by this build of nbdring yet; "
        "use an nbd:// or nbd+unix:// URI"));
  }
  switch (address.transport) {
    case nbd::NbdUri::Transport::kUnix: {
      sockaddr_un unix_address{};
      unix_address.sun_family = AF_UNIX;
      if (address.socket_path.empty() ||
          address.socket_path.size() >= sizeof(unix_address.sun_path)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Unix socket path '", address.socket_path, "' must be 1 to ",
            sizeof(unix_address.sun_path) - 1, " bytes long"));
      }
      std::memcpy(unix_address.sun_path, address.socket_path.data(), address.socket_path.size());
      return ConnectAddress(AF_UNIX, reinterpret_cast<sockaddr*>(&unix_address),
                            sizeof(unix_address), address.socket_path, deadline, abort_fd);
    }
    case nbd::NbdUri::Transport::kVsock: {
      sockaddr_vm vsock_address{};
      vsock_address.svm_family = AF_VSOCK;
      vsock_address.svm_cid = address.vsock_cid;
      vsock_address.svm_port = address.vsock_port;
      return ConnectAddress(AF_VSOCK, reinterpret_cast<sockaddr*>(&vsock_address),
                            sizeof(vsock_address),
                            absl::StrCat("vsock ", address.vsock_cid, ":", address.vsock_port),
                            deadline, abort_fd);
    }
    case nbd::NbdUri::Transport::kTcp: {
      addrinfo hints{};
      hints.ai_socktype = SOCK_STREAM;
      hints.ai_family = AF_UNSPEC;
      addrinfo* results = nullptr;
      std::string host = address.host.empty() ? "localhost" : address.host;
      std::string port = absl::StrCat(address.port);
      int error = getaddrinfo(host.c_str(), port.c_str(), &hints, &results);
      if (error != 0) {
        return absl::UnavailableError(
            absl::StrCat("cannot resolve host '", host, "': ", gai_strerror(error)));
      }
      absl::Status last = absl::UnavailableError(absl::StrCat("no address for '", host, "'"));
      for (addrinfo* entry = results; entry != nullptr; entry = entry->ai_next) {
        auto fd = ConnectAddress(entry->ai_family, entry->ai_addr, entry->ai_addrlen,
                                 absl::StrCat(host, ":", port), deadline, abort_fd);
        if (fd.ok()) {
          freeaddrinfo(results);
          return fd;
        }
        last = fd.status();
      }
      freeaddrinfo(results);
      return last;
    }
  }
  return absl::InvalidArgumentError("unknown transport");
}

absl::Status RunHandshake(int fd, nbd::Handshake& handshake, absl::Time deadline,
                          int abort_fd) {
  std::vector<uint8_t> buffer;
  auto send_output = [&]() -> absl::Status {
    while (!handshake.output().empty()) {
      absl::Span<const uint8_t> output = handshake.output();
      ssize_t sent = send(fd, output.data(), output.size(), MSG_NOSIGNAL);
      if (sent > 0) {
        handshake.ConsumeOutput(static_cast<size_t>(sent));
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      if (sent < 0 && errno == EAGAIN) {
        absl::Status ready = WaitFor(fd, POLLOUT, deadline,
                                     "sending to the server during the handshake", abort_fd);
        if (!ready.ok()) return ready;
        continue;
      }
      return ErrnoError("sending during the handshake", errno);
    }
    return absl::OkStatus();
  };
  while (true) {
    absl::Status sent = send_output();
    if (!sent.ok()) return sent;
    switch (handshake.state()) {
      case nbd::Handshake::State::kDone:
        return MakeBlocking(fd);
      case nbd::Handshake::State::kFailed:
        return absl::InternalError("handshake already failed");
      case nbd::Handshake::State::kStartTls:
        return absl::UnimplementedError(
            "the server agreed to STARTTLS but this build of nbdring has no TLS support");
      case nbd::Handshake::State::kRunning:
        break;
    }
    size_t wanted = handshake.bytes_wanted();
    if (wanted == 0) wanted = 1;
    buffer.resize(wanted);
    ssize_t received = recv(fd, buffer.data(), wanted, 0);
    if (received == 0) {
      return absl::UnavailableError(
          "the server closed the connection during the handshake (it may have refused the "
          "export or the options)");
    }
    if (received < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        absl::Status ready =
            WaitFor(fd, POLLIN, deadline, "waiting for the server's handshake reply", abort_fd);
        if (!ready.ok()) return ready;
        continue;
      }
      return ErrnoError("receiving during the handshake", errno);
    }
    auto consumed = handshake.Feed(absl::MakeConstSpan(buffer.data(), static_cast<size_t>(received)));
    if (!consumed.ok()) return consumed.status();
    if (*consumed != static_cast<size_t>(received)) {
      return absl::InternalError("the server sent bytes past the end of the handshake");
    }
  }
}

}  // namespace nbdring
