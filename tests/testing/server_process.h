// tests/testing/server_process.h — real NBD servers (nbdkit, qemu-nbd) started by
// a test on a private Unix socket (or a 127.0.0.1 ephemeral port) and stopped when it ends.
//
// Sockets live in a short private directory under /tmp: Bazel's $TEST_TMPDIR is longer than
// the 107 bytes a Unix socket path may have. Servers are started in the foreground as children
// of the test, and Start() returns only once the server accepts connections. (nbd-server
// serves one client per process in the foreground, which a readiness probe would use up:
// tests/runtime/test_support.h has a one-shot launcher for it.)
#ifndef NBDRING_TESTS_TESTING_SERVER_PROCESS_H_
#define NBDRING_TESTS_TESTING_SERVER_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace nbd::testing {

// A directory under /tmp removed (recursively) on destruction.
class TempDir {
 public:
  static absl::StatusOr<std::unique_ptr<TempDir>> Create();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Writes a disk image of `size` bytes at `path`, byte i being `byte_at(i)`: the file a
// file-backed server (nbdkit's file plugin) serves, which keeps its data across Restart().
absl::Status WriteDiskImage(const std::string& path, uint64_t size,
                            const std::function<uint8_t(uint64_t offset)>& byte_at);

class ServerProcess {
 public:
  // nbdkit -f --exit-with-parent -U <sock> <args...>, e.g. {"memory", "1G"}.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> StartNbdkit(
      const std::vector<std::string>& args);
  // The same on 127.0.0.1 with an ephemeral port (nbdkit -p 0 is not supported: a free port
  // is picked first).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> StartNbdkitTcp(
      const std::vector<std::string>& args);
  // qemu-nbd -f <format> -t --shared=<shared> -k <sock> <file> [extra args].
  static absl::StatusOr<std::unique_ptr<ServerProcess>> StartQemuNbd(
      const std::string& file, const std::string& format, int shared = 8,
      const std::vector<std::string>& extra_args = {});

  // Forks and execs `argv` as a child that dies with the test, stdout and stderr appended to
  // `log_path`; returns its pid without waiting (for servers that need their own readiness
  // check, e.g. a one-shot nbd-server).
  static absl::StatusOr<pid_t> Launch(const std::vector<std::string>& argv,
                                      const std::string& log_path);

  ~ServerProcess();  // SIGTERM, wait, then SIGKILL after a grace period

  // nbd+unix:///<export>?socket=<path>, or nbd://127.0.0.1:<port>/<export> for TCP.
  std::string uri(const std::string& export_name = "") const;
  const std::string& socket_path() const { return socket_path_; }  // empty for TCP
  int port() const { return port_; }                               // 0 for Unix sockets
  pid_t pid() const { return pid_; }
  TempDir& dir() { return *dir_; }

  void Kill(int signal);     // e.g. SIGKILL mid-test
  absl::Status Wait();       // reap after Kill
  // Starts the same command again on the same socket or port (after Kill + Wait), e.g. to
  // test reconnecting; returns once it accepts connections.
  absl::Status Restart();

 private:
  ServerProcess() = default;
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Spawn(
      std::unique_ptr<TempDir> dir, const std::vector<std::string>& argv, std::string socket_path,
      int port, absl::Duration ready_timeout);
  absl::Status AwaitReady(absl::Duration ready_timeout);
  std::unique_ptr<TempDir> dir_;
  std::vector<std::string> argv_;
  std::string socket_path_;
  int port_ = 0;
  pid_t pid_ = -1;
  bool reaped_ = false;
};

}  // namespace nbd::testing

#endif  // NBDRING_TESTS_TESTING_SERVER_PROCESS_H_
