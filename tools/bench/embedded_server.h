// tools/bench/embedded_server.h — the server nbd-bench starts when it is given no URI.
//
// Runs `nbdkit -f --exit-with-parent -U <dir>/nbd.sock -P <dir>/nbdkit.pid <plugin args>` in a
// private mkdtemp("/tmp/nbdr-bench-XXXXXX") directory, and returns once the server accepts
// connections (nbdkit writes the -P file when it does). The child gets its own process group (a
// terminal's Ctrl-C reaches only nbd-bench, which then finishes the run cleanly before stopping the
// server), a clean signal mask, and stderr for its stdout (nbd-bench's stdout may be JSON).
// --exit-with-parent stops it even if nbd-bench is killed; the destructor stops it otherwise and
// removes the directory.
#ifndef NBDRING_TOOLS_BENCH_EMBEDDED_SERVER_H_
#define NBDRING_TOOLS_BENCH_EMBEDDED_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace nbdbench {

class EmbeddedServer {
 public:
  // Must be called from the thread that lives longest (main): Linux delivers nbdkit's
  // parent-death signal when the thread that forked it exits.
  static absl::StatusOr<std::unique_ptr<EmbeddedServer>> Start(
      const std::vector<std::string>& plugin_args, absl::Duration timeout = absl::Seconds(10));
  ~EmbeddedServer();  // SIGTERM, wait (SIGKILL after 5 s), remove the directory
  EmbeddedServer(const EmbeddedServer&) = delete;
  EmbeddedServer& operator=(const EmbeddedServer&) = delete;

  // nbd+unix:///?socket=<dir>/nbd.sock
  std::string uri() const;
  // What was run, for messages: "nbdkit memory 1G".
  const std::string& description() const { return description_; }
  // Restricts nbdkit (every thread it has, and so every thread it starts later) to `cpu`.
  absl::Status PinTo(int cpu);

 private:
  EmbeddedServer(std::string directory, std::string socket_path, std::string pid_file,
                 std::string description)
      : directory_(std::move(directory)),
        socket_path_(std::move(socket_path)),
        pid_file_(std::move(pid_file)),
        description_(std::move(description)) {}

  std::string directory_;
  std::string socket_path_;
  std::string pid_file_;
  std::string description_;
  pid_t pid_ = -1;
};

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_EMBEDDED_SERVER_H_
