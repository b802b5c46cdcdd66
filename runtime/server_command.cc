#include "runtime/server_command.h"

#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

extern char** environ;

namespace nbdring {

absl::StatusOr<ServerCommand> StartServerCommand(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("ConnectCommand: the command is empty");
  }
  int ends[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  FileDescriptor ours(ends[0]);
  FileDescriptor theirs(ends[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 clears close-on-exec on the copies: the child keeps exactly stdin and stdout.
  posix_spawn_file_actions_adddup2(&actions, theirs.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, theirs.get(), STDOUT_FILENO);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int error = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) {
    const std::string message = absl::StrCat("cannot run '", argv[0], "': ", std::strerror(error));
    return error == ENOENT || error == EACCES ? absl::NotFoundError(message)
                                              : absl::InternalError(message);
  }
  absl::Status nonblocking = SetNonBlocking(ours.get(), true);
  if (!nonblocking.ok()) {
    EndServerCommand(pid, absl::ZeroDuration());
    return nonblocking;
  }
  return ServerCommand{std::move(ours), pid};
}

void EndServerCommand(pid_t pid, absl::Duration grace) {
  const absl::Time deadline = absl::Now() + grace;
  while (true) {
    const pid_t done = waitpid(pid, nullptr, WNOHANG);
    if (done == pid || (done < 0 && errno != EINTR)) return;  // reaped, or not our child
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  kill(pid, SIGKILL);
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace nbdring
