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
#include <algorithm>
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

}  // namespace

absl::Status SetNonBlocking(int fd, bool non_blocking) {
  int flags = fcntl(fd, F_GETFL);
  flags = non_blocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (flags < 0 || fcntl(fd, F_SETFL, flags) != 0) {
    return ErrnoError(non_blocking ? absl::StrCat("making socket fd ", fd, " non-blocking")
                                   : std::string("making the socket blocking for io_uring"),
                      errno);
  }
  return absl::OkStatus();
}

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

namespace {

// The byte stream under the handshake: the socket itself, and after STARTTLS the TLS session
// on it. Every wait is bounded by the deadline and watches abort_fd.
class HandshakeStream {
 public:
  HandshakeStream(int fd, absl::Time deadline, int abort_fd)
      : fd_(fd), deadline_(deadline), abort_fd_(abort_fd) {}

  absl::Status Send(absl::Span<const uint8_t> bytes) {
    if (tls_ == nullptr) return SendRaw(bytes);
    absl::Status sealed = tls_->Seal(bytes);
    if (!sealed.ok()) return sealed;
    return SendTlsOutput();
  }

  // Up to `wanted` bytes of the server's stream (at least one).
  absl::StatusOr<size_t> Receive(uint8_t* buffer, size_t wanted) {
    if (tls_ == nullptr) return ReceiveRaw(buffer, wanted, "waiting for the server's handshake reply");
    while (true) {
      auto opened = tls_->Open(buffer, wanted, &cipher_input_);
      if (!opened.ok()) return opened.status();
      if (*opened > 0) return opened;
      absl::Status received = ReceiveCiphertext("waiting for the server's reply over TLS");
      if (!received.ok()) return received;
    }
  }

  // STARTTLS was acknowledged: the next bytes both ways are the TLS handshake. Bytes the
  // server sent after its acknowledgement are still in the socket (the NBD handshake reads
  // exactly what it needs), so they reach GnuTLS as handshake records, never as protected
  // data: injected plaintext breaks the handshake.
  absl::Status StartTls(const std::shared_ptr<const TlsContext>& context) {
    if (context == nullptr) {
      return absl::InternalError("the server agreed to STARTTLS, which was not asked for");
    }
    auto session = TlsSession::Create(context);
    if (!session.ok()) return session.status();
    tls_ = *std::move(session);
    while (true) {
      auto done = tls_->Handshake(&cipher_input_);
      if (!done.ok()) return done.status();
      absl::Status sent = SendTlsOutput();
      if (!sent.ok()) return sent;
      if (*done) return absl::OkStatus();
      absl::Status received = ReceiveCiphertext("in the TLS handshake");
      if (received.code() == absl::StatusCode::kUnavailable) {
        // nbdkit and qemu-nbd hang up without an alert on a key they do not accept.
        return absl::UnauthenticatedError(absl::StrCat(
            "TLS handshake failed: the server hung up (", received.message(),
            "); it most likely refused our credentials (PSK or client certificate)"));
      }
      if (!received.ok()) return received;
    }
  }

  // The session for the transmission phase, with any ciphertext read but not yet opened.
  std::unique_ptr<TlsSession> TakeTls() {
    if (tls_ != nullptr) tls_->CarryInput(cipher_input_);
    return std::move(tls_);
  }

 private:
  absl::Status SendRaw(absl::Span<const uint8_t> bytes) {
    while (!bytes.empty()) {
      ssize_t sent = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (sent > 0) {
        bytes.remove_prefix(static_cast<size_t>(sent));
        continue;
      }
      if (sent < 0 && errno == EINTR) continue;
      if (sent < 0 && errno == EAGAIN) {
        absl::Status ready = WaitFor(fd_, POLLOUT, deadline_,
                                     "sending to the server during the handshake", abort_fd_);
        if (!ready.ok()) return ready;
        continue;
      }
      return ErrnoError("sending during the handshake", errno);
    }
    return absl::OkStatus();
  }

  absl::Status SendTlsOutput() {
    tls_->TakeOutput(&sealed_);
    return SendRaw(sealed_);
  }

  absl::StatusOr<size_t> ReceiveRaw(uint8_t* buffer, size_t wanted, absl::string_view stage) {
    while (true) {
      ssize_t received = recv(fd_, buffer, wanted, 0);
      if (received > 0) return static_cast<size_t>(received);
      if (received == 0) {
        return absl::UnavailableError(
            "the server closed the connection during the handshake (it may have refused the "
            "export, the options or the TLS credentials)");
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return ErrnoError("receiving during the handshake", errno);
      absl::Status ready = WaitFor(fd_, POLLIN, deadline_, stage, abort_fd_);
      if (!ready.ok()) return ready;
    }
  }

  // Called only once the session took all of cipher_input_.
  absl::Status ReceiveCiphertext(absl::string_view stage) {
    cipher_buffer_.resize(16 * 1024 + 512);
    auto received = ReceiveRaw(cipher_buffer_.data(), cipher_buffer_.size(), stage);
    if (!received.ok()) return received.status();
    cipher_input_ = absl::MakeConstSpan(cipher_buffer_.data(), *received);
    return absl::OkStatus();
  }

  int fd_;
  absl::Time deadline_;
  int abort_fd_;
  std::unique_ptr<TlsSession> tls_;
  std::vector<uint8_t> sealed_;
  std::vector<uint8_t> cipher_buffer_;
  absl::Span<const uint8_t> cipher_input_;  // ciphertext received, not yet taken by tls_
};

}  // namespace

absl::Status RunHandshake(int fd, nbd::Handshake& handshake, absl::Time deadline, int abort_fd,
                          const std::shared_ptr<const TlsContext>& tls,
                          std::unique_ptr<TlsSession>* session) {
  HandshakeStream stream(fd, deadline, abort_fd);
  std::vector<uint8_t> buffer;
  while (true) {
    if (!handshake.output().empty()) {
      absl::Status sent = stream.Send(handshake.output());
      if (!sent.ok()) return sent;
      handshake.ConsumeOutput(handshake.output().size());
    }
    switch (handshake.state()) {
      case nbd::Handshake::State::kDone:
        if (session != nullptr) *session = stream.TakeTls();
        // io_uring then waits for readiness itself (see socket.h).
        return SetNonBlocking(fd, false);
      case nbd::Handshake::State::kFailed:
        return absl::InternalError("handshake already failed");
      case nbd::Handshake::State::kStartTls: {
        absl::Status started = stream.StartTls(tls);
        if (!started.ok()) return started;
        handshake.TlsEstablished();
        continue;
      }
      case nbd::Handshake::State::kRunning:
        break;
    }
    size_t wanted = std::max<size_t>(handshake.bytes_wanted(), 1);
    buffer.resize(wanted);
    auto received = stream.Receive(buffer.data(), wanted);
    if (!received.ok()) return received.status();
    auto consumed = handshake.Feed(absl::MakeConstSpan(buffer.data(), *received));
    if (!consumed.ok()) return consumed.status();
    if (*consumed != *received) {
      return absl::InternalError("the server sent bytes past the end of the handshake");
    }
  }
}

}  // namespace nbdring
