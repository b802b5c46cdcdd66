// runtime/server_command.h — a server started as a child process on a socketpair, for
// Client::ConnectCommand (libnbd's nbd_connect_command): the child's stdin and stdout are one
// end, the client negotiates over the other. Started with posix_spawnp, which is safe in a
// process that has threads (no code runs between fork and exec).
#ifndef NBDRING_RUNTIME_SERVER_COMMAND_H_
#define NBDRING_RUNTIME_SERVER_COMMAND_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/socket.h"

namespace nbdring {

struct ServerCommand {
  FileDescriptor socket;  // the client's end, non-blocking
  pid_t pid = -1;
};

// Errors: InvalidArgument for an empty argv, NotFound when argv[0] is not an executable in
// PATH, Internal for the rest (socketpair, spawn).
absl::StatusOr<ServerCommand> StartServerCommand(const std::vector<std::string>& argv);

// Waits up to `grace` for the child to exit (it should, once its socket is closed), then
// kills it with SIGKILL; reaps it either way.
void EndServerCommand(pid_t pid, absl::Duration grace);

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_SERVER_COMMAND_H_
