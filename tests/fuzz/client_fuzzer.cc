// Fuzzes a whole nbdring::Client — handshake over a real socket, ring thread, io_uring sends and
// receives, reply parsing, timeouts, teardown — against an arbitrary server, as libnbd's
// fuzzing/ does: the input is everything the server sends, byte for byte.
//
// A fake server on a private Unix socket accepts the client's connection and writes the input
// while reading and discarding what the client sends. The input's handshake part (as far as
// nbd::Handshake with the client's options gets through it) goes out at once; the rest only
// after the client has put its requests on the wire, so that captured replies meet the cookies
// they were captured with rather than arriving before the requests. Then the server closes its
// side. The client (tests/fuzz/capture/client_session.h) connects, issues a fixed set of
// requests if it got that far, waits for their callbacks and is destroyed.
//
// Beyond crashes, leaks and hangs it traps when the client breaks a promise of client.h: a
// callback that runs twice or never (within 5 s, with a 1 s request timeout), a hole or extents
// reported for the wrong request or outside it.
//
// Seeds: tests/fuzz/corpus/client, captured from nbdkit and qemu-nbd by
// tests/fuzz/capture/capture.cc.
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "nbdring/client.h"
#include "tests/fuzz/capture/client_session.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "client_fuzzer: %s\n", what);
    __builtin_trap();
  }
}

// A listening Unix socket in a private directory under /tmp (Unix socket paths are short),
// shared by all inputs and removed at exit.
class Listener {
 public:
  Listener() {
    char directory[] = "/tmp/nbdrf-XXXXXX";
    Check(mkdtemp(directory) != nullptr, "mkdtemp /tmp/nbdrf-XXXXXX failed");
    directory_ = directory;
    path_ = directory_ + "/s";
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    Check(fd_ >= 0, "socket(AF_UNIX) failed");
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof(address.sun_path), "%s", path_.c_str());
    Check(bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0,
          "bind of the fake server's socket failed");
    Check(listen(fd_, 4) == 0, "listen failed");
  }
  ~Listener() {
    close(fd_);
    unlink(path_.c_str());
    rmdir(directory_.c_str());
  }
  int fd() const { return fd_; }
  std::string uri() const { return "nbd+unix:///?socket=" + path_; }

 private:
  std::string directory_;
  std::string path_;
  int fd_ = -1;
};

// Serves one connection: writes `stream[0, handshake_bytes)`, then, once released, the rest;
// reads and discards whatever the client sends until it closes.
class FakeServer {
 public:
  FakeServer(int listen_fd, absl::Span<const uint8_t> stream, size_t handshake_bytes)
      : listen_fd_(listen_fd), stream_(stream), held_back_from_(handshake_bytes) {
    release_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    Check(release_fd_ >= 0, "eventfd failed");
  }
  ~FakeServer() { close(release_fd_); }

  void Release() {
    const uint64_t one = 1;
    Check(write(release_fd_, &one, sizeof(one)) == sizeof(one), "eventfd write failed");
  }

  void Serve() {
    pollfd waiting{listen_fd_, POLLIN, 0};
    if (poll(&waiting, 1, 3000) != 1) return;  // the client never connected
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    Exchange(fd);
    close(fd);
  }

 private:
  void Exchange(int fd) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    size_t written = 0;
    bool released = false;
    bool write_side_open = true;
    uint8_t discard[64 * 1024];
    while (absl::Now() < deadline) {
      const size_t limit = released ? stream_.size() : held_back_from_;
      if (written == stream_.size() && write_side_open) {
        shutdown(fd, SHUT_WR);  // the client sees the end of the stream
        write_side_open = false;
      }
      pollfd fds[2] = {{fd, POLLIN, 0}, {release_fd_, POLLIN, 0}};
      if (written < limit) fds[0].events |= POLLOUT;
      if (poll(fds, released ? 1 : 2, 100) < 0 && errno != EINTR) return;
      if (!released && (fds[1].revents & POLLIN) != 0) released = true;
      if ((fds[0].revents & POLLOUT) != 0) {
        const ssize_t sent = send(fd, stream_.data() + written, limit - written, MSG_NOSIGNAL);
        if (sent > 0) written += static_cast<size_t>(sent);
        if (sent < 0 && errno != EAGAIN && errno != EINTR) return;  // the client hung up
      }
      if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t received = recv(fd, discard, sizeof(discard), 0);
        if (received == 0) return;  // the client closed
        if (received < 0 && errno != EAGAIN && errno != EINTR) return;
      }
    }
  }

  const int listen_fd_;
  const absl::Span<const uint8_t> stream_;
  const size_t held_back_from_;
  int release_fd_ = -1;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Listener listener;
  const absl::Span<const uint8_t> stream(data, size);
  const std::optional<nbdring::fuzzing::HandshakeSplit> split =
      nbdring::fuzzing::SplitHandshake(stream);
  FakeServer server(listener.fd(), stream, split.has_value() ? split->server_bytes : size);
  std::thread server_thread([&server] { server.Serve(); });

  nbdring::fuzzing::SessionRequests requests;
  {
    auto client = nbdring::Client::Connect(nbdring::fuzzing::SessionOptions(listener.uri()));
    if (client.ok()) {
      const absl::Status run = requests.Run(
          **client, [&server] { server.Release(); }, absl::Seconds(5));
      if (!run.ok()) std::fprintf(stderr, "client_fuzzer: %s\n", run.ToString().c_str());
      Check(run.ok(), "a session broke a promise of client.h");
    }
  }  // the client is destroyed here
  server.Release();
  server_thread.join();
  const absl::Status check = requests.Check();
  if (!check.ok()) std::fprintf(stderr, "client_fuzzer: %s\n", check.ToString().c_str());
  Check(check.ok(), "a callback ran again while the client was destroyed");
  return 0;
}
