#include "runtime/resumable_negotiation.h"

#include <linux/vm_sockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace nbdring {

ResumableNegotiation::ResumableNegotiation(NegotiationPlan plan)
    : plan_(std::move(plan)), handshake_(plan_.handshake) {}

ResumableNegotiation::Want ResumableNegotiation::Fail(absl::Status status) {
  if (phase_ == Phase::kHandshake) {
    status = absl::Status(status.code(), absl::StrCat("handshake with ", plan_.address.ToString(),
                                                      " failed: ", status.message()));
  }
  phase_ = Phase::kFailed;
  status_ = std::move(status);
  fd_ = FileDescriptor();
  tls_.reset();
  return Want::kFailed;
}

absl::Status ResumableNegotiation::Abandon(absl::Status why) {
  if (phase_ != Phase::kDone && phase_ != Phase::kFailed) Fail(std::move(why));
  return status_;
}

ResumableNegotiation::Want ResumableNegotiation::Start(FileDescriptor* connected) {
  if (connected != nullptr) {
    fd_ = std::move(*connected);
    phase_ = Phase::kHandshake;
    return PumpHandshake();
  }
  phase_ = Phase::kConnecting;
  const nbd::NbdUri& address = plan_.address;
  switch (address.transport) {
    case nbd::NbdUri::Transport::kUnix: {
      Address entry;
      auto* unix_address = reinterpret_cast<sockaddr_un*>(&entry.storage);
      unix_address->sun_family = AF_UNIX;
      if (address.socket_path.empty() ||
          address.socket_path.size() >= sizeof(unix_address->sun_path)) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            "Unix socket path '", address.socket_path, "' must be 1 to ",
            sizeof(unix_address->sun_path) - 1, " bytes long")));
      }
      std::memcpy(unix_address->sun_path, address.socket_path.data(), address.socket_path.size());
      entry.length = sizeof(sockaddr_un);
      entry.family = AF_UNIX;
      addresses_.push_back(entry);
      name_ = address.socket_path;
      break;
    }
    case nbd::NbdUri::Transport::kVsock: {
      Address entry;
      auto* vsock_address = reinterpret_cast<sockaddr_vm*>(&entry.storage);
      vsock_address->svm_family = AF_VSOCK;
      vsock_address->svm_cid = address.vsock_cid;
      vsock_address->svm_port = address.vsock_port;
      entry.length = sizeof(sockaddr_vm);
      entry.family = AF_VSOCK;
      addresses_.push_back(entry);
      name_ = absl::StrCat("vsock ", address.vsock_cid, ":", address.vsock_port);
      break;
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
        return Fail(absl::UnavailableError(
            absl::StrCat("cannot resolve host '", host, "': ", gai_strerror(error))));
      }
      for (addrinfo* found = results; found != nullptr; found = found->ai_next) {
        if (found->ai_addrlen > sizeof(sockaddr_storage)) continue;
        Address entry;
        std::memcpy(&entry.storage, found->ai_addr, found->ai_addrlen);
        entry.length = found->ai_addrlen;
        entry.family = found->ai_family;
        addresses_.push_back(entry);
      }
      freeaddrinfo(results);
      name_ = absl::StrCat(host, ":", port);
      last_connect_error_ = absl::UnavailableError(absl::StrCat("no address for '", host, "'"));
      break;
    }
  }
  stage_ = absl::StrCat("connecting to ", name_);
  return ConnectNext();
}

ResumableNegotiation::Want ResumableNegotiation::ConnectNext() {
  while (next_address_ < addresses_.size()) {
    const Address& address = addresses_[next_address_++];
    fd_ = FileDescriptor(socket(address.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd_.get() < 0) {
      last_connect_error_ = ErrnoError(absl::StrCat("socket for ", name_), errno);
      continue;
    }
    if (connect(fd_.get(), reinterpret_cast<const sockaddr*>(&address.storage),
                address.length) == 0) {
      return FinishConnect();
    }
    if (errno == EINPROGRESS || errno == EAGAIN) return Want::kWritable;
    last_connect_error_ = ErrnoError(absl::StrCat("connect to ", name_), errno);
    fd_ = FileDescriptor();
  }
  return Fail(last_connect_error_);
}

ResumableNegotiation::Want ResumableNegotiation::FinishConnect() {
  int error = 0;
  socklen_t error_length = sizeof(error);
  if (getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &error, &error_length) != 0) error = errno;
  if (error != 0) {
    last_connect_error_ = ErrnoError(absl::StrCat("connect to ", name_), error);
    fd_ = FileDescriptor();
    return ConnectNext();
  }
  const int family = addresses_[next_address_ - 1].family;
  if (family == AF_INET || family == AF_INET6) {
    // Requests are small and already batched by the ring: Nagle would only add latency.
    int one = 1;
    setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  phase_ = Phase::kHandshake;
  return PumpHandshake();
}

ResumableNegotiation::Want ResumableNegotiation::Step() {
  switch (phase_) {
    case Phase::kIdle:
      return Start();
    case Phase::kConnecting: {
      // A step may come without readiness: only a writable socket has finished connecting.
      pollfd ready{fd_.get(), POLLOUT, 0};
      if (poll(&ready, 1, 0) == 0) return Want::kWritable;
      return FinishConnect();
    }
    case Phase::kHandshake:
      return PumpHandshake();
    case Phase::kDone:
      return Want::kDone;
    case Phase::kFailed:
      return Want::kFailed;
  }
  return Want::kFailed;
}

bool ResumableNegotiation::Flush(Want* want) {
  while (out_sent_ < out_.size()) {
    ssize_t sent = send(fd_.get(), out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
    if (sent > 0) {
      out_sent_ += static_cast<size_t>(sent);
      continue;
    }
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      stage_ = "sending to the server during the handshake";
      *want = Want::kWritable;
      return false;
    }
    *want = Fail(ErrnoError("sending during the handshake", errno));
    return false;
  }
  out_.clear();
  out_sent_ = 0;
  return true;
}

bool ResumableNegotiation::ReceiveCiphertext(Want* want, bool in_tls_handshake) {
  cipher_buffer_.resize(16 * 1024 + 512);
  while (true) {
    ssize_t received = recv(fd_.get(), cipher_buffer_.data(), cipher_buffer_.size(), 0);
    if (received > 0) {
      cipher_input_ = absl::MakeConstSpan(cipher_buffer_.data(), static_cast<size_t>(received));
      return true;
    }
    if (received < 0 && errno == EINTR) continue;
    if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      stage_ = in_tls_handshake ? "in the TLS handshake" : "waiting for the server's reply over TLS";
      *want = Want::kReadable;
      return false;
    }
    absl::Status status =
        received == 0 ? absl::UnavailableError(
                            "the server closed the connection during the handshake (it may have "
                            "refused the export, the options or the TLS credentials)")
                      : ErrnoError("receiving during the handshake", errno);
    if (in_tls_handshake && status.code() == absl::StatusCode::kUnavailable) {
      // nbdkit and qemu-nbd hang up without an alert on a key they do not accept.
      status = absl::UnauthenticatedError(absl::StrCat(
          "TLS handshake failed: the server hung up (", status.message(),
          "); it most likely refused our credentials (PSK or client certificate)"));
    }
    *want = Fail(status);
    return false;
  }
}

size_t ResumableNegotiation::Receive(uint8_t* buffer, size_t wanted, Want* want) {
  if (tls_ != nullptr) {
    while (true) {
      auto opened = tls_->Open(buffer, wanted, &cipher_input_);
      if (!opened.ok()) {
        *want = Fail(opened.status());
        return 0;
      }
      if (*opened > 0) return *opened;
      if (!ReceiveCiphertext(want, /*in_tls_handshake=*/false)) return 0;
    }
  }
  while (true) {
    ssize_t received = recv(fd_.get(), buffer, wanted, 0);
    if (received > 0) return static_cast<size_t>(received);
    if (received < 0 && errno == EINTR) continue;
    if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      stage_ = "waiting for the server's handshake reply";
      *want = Want::kReadable;
      return 0;
    }
    *want = Fail(received == 0
                     ? absl::UnavailableError(
                           "the server closed the connection during the handshake (it may have "
                           "refused the export, the options or the TLS credentials)")
                     : ErrnoError("receiving during the handshake", errno));
    return 0;
  }
}

ResumableNegotiation::Want ResumableNegotiation::PumpHandshake() {
  Want want = Want::kFailed;
  while (true) {
    if (!Flush(&want)) return want;
    if (tls_handshaking_) {
      // STARTTLS was acknowledged: the next bytes both ways are the TLS handshake. Bytes the
      // server sent after its acknowledgement are still in the socket (the NBD handshake
      // reads exactly what it needs), so they reach GnuTLS as handshake records.
      auto done = tls_->Handshake(&cipher_input_);
      if (!done.ok()) return Fail(done.status());
      tls_->TakeOutput(&sealed_);
      out_.insert(out_.end(), sealed_.begin(), sealed_.end());
      if (*done) {
        tls_handshaking_ = false;
        handshake_.TlsEstablished();
        continue;
      }
      if (!out_.empty()) continue;  // send it first: the server waits for it
      if (!ReceiveCiphertext(&want, /*in_tls_handshake=*/true)) return want;
      continue;
    }
    if (!handshake_.output().empty()) {
      absl::Span<const uint8_t> output = handshake_.output();
      if (tls_ != nullptr) {
        absl::Status sealed = tls_->Seal(output);
        if (!sealed.ok()) return Fail(sealed);
        tls_->TakeOutput(&sealed_);
        out_.insert(out_.end(), sealed_.begin(), sealed_.end());
      } else {
        out_.insert(out_.end(), output.begin(), output.end());
      }
      handshake_.ConsumeOutput(output.size());
      continue;
    }
    switch (handshake_.state()) {
      case nbd::Handshake::State::kDone: {
        // io_uring then waits for readiness itself (see socket.h).
        absl::Status blocking = SetNonBlocking(fd_.get(), false);
        if (!blocking.ok()) return Fail(blocking);
        if (tls_ != nullptr) tls_->CarryInput(cipher_input_);
        phase_ = Phase::kDone;
        stage_.clear();
        return Want::kDone;
      }
      case nbd::Handshake::State::kFailed:
        return Fail(absl::InternalError("handshake already failed"));
      case nbd::Handshake::State::kStartTls: {
        if (plan_.tls == nullptr) {
          return Fail(
              absl::InternalError("the server agreed to STARTTLS, which was not asked for"));
        }
        auto session = TlsSession::Create(plan_.tls);
        if (!session.ok()) return Fail(session.status());
        tls_ = *std::move(session);
        tls_handshaking_ = true;
        stage_ = "in the TLS handshake";
        continue;
      }
      case nbd::Handshake::State::kRunning:
        break;
    }
    size_t wanted = std::max<size_t>(handshake_.bytes_wanted(), 1);
    receive_buffer_.resize(wanted);
    size_t received = Receive(receive_buffer_.data(), wanted, &want);
    if (received == 0) return want;
    auto consumed = handshake_.Feed(absl::MakeConstSpan(receive_buffer_.data(), received));
    if (!consumed.ok()) return Fail(consumed.status());
    if (*consumed != received) {
      return Fail(absl::InternalError("the server sent bytes past the end of the handshake"));
    }
  }
}

Negotiated ResumableNegotiation::Take() {
  Negotiated negotiated{std::move(fd_), std::move(tls_), handshake_.export_info(),
                        handshake_.exports(), handshake_.listed_meta_contexts()};
  phase_ = Phase::kFailed;
  status_ = absl::FailedPreconditionError("taken");
  return negotiated;
}

}  // namespace nbdring
