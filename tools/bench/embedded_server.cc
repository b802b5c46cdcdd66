#include "tools/bench/embedded_server.h"

#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace nbdbench {
namespace {

// nbdkit writes its -P file only once it is listening on its socket; waiting for it avoids a
// probe connection, which nbdkit would log as a failed handshake.
bool PidFileWritten(const std::string& path) {
  struct stat status;
  return stat(path.c_str(), &status) == 0 && status.st_size > 0;
}

std::string DescribeExit(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exit status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return absl::StrCat("signal ", WTERMSIG(wait_status));
  return absl::StrCat("wait status ", wait_status);
}

// posix_spawn's attributes and file actions, destroyed on every path.
struct SpawnSettings {
  SpawnSettings() {
    posix_spawnattr_init(&attributes);
    posix_spawn_file_actions_init(&file_actions);
  }
  ~SpawnSettings() {
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&file_actions);
  }
  posix_spawnattr_t attributes;
  posix_spawn_file_actions_t file_actions;
};

}  // namespace

absl::StatusOr<std::unique_ptr<EmbeddedServer>> EmbeddedServer::Start(
    const std::vector<std::string>& plugin_args, absl::Duration timeout) {
  char directory_template[] = "/tmp/nbdr-bench-XXXXXX";
  if (mkdtemp(directory_template) == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot create a directory for the embedded server's socket: mkdtemp(",
                     directory_template, "): ", std::strerror(errno)));
  }
  const std::string directory = directory_template;
  std::unique_ptr<EmbeddedServer> server(
      new EmbeddedServer(directory, directory + "/nbd.sock", directory + "/nbdkit.pid",
                         absl::StrCat("nbdkit ", absl::StrJoin(plugin_args, " "))));

  std::vector<std::string> arguments = {
      "nbdkit", "-f", "--exit-with-parent", "-U", server->socket_path_, "-P", server->pid_file_};
  arguments.insert(arguments.end(), plugin_args.begin(), plugin_args.end());
  std::vector<char*> argv;
  for (std::string& argument : arguments) argv.push_back(argument.data());
  argv.push_back(nullptr);

  SpawnSettings settings;
  sigset_t signals;
  sigemptyset(&signals);
  posix_spawnattr_setsigmask(&settings.attributes, &signals);  // nbd-bench blocks some
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  posix_spawnattr_setsigdefault(&settings.attributes, &signals);
  posix_spawnattr_setpgroup(&settings.attributes, 0);
  posix_spawnattr_setflags(&settings.attributes,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  posix_spawn_file_actions_adddup2(&settings.file_actions, STDERR_FILENO, STDOUT_FILENO);
  pid_t pid = -1;
  const int spawn_error = posix_spawnp(&pid, "nbdkit", &settings.file_actions, &settings.attributes,
                                       argv.data(), environ);
  if (spawn_error == ENOENT) {
    return absl::NotFoundError(
        "nbdkit is not installed, and with no URI nbd-bench starts an nbdkit memory server "
        "itself: install it with `apt-get install nbdkit` (or run tools/setup.sh), or pass the "
        "URI of a running NBD server");
  }
  if (spawn_error != 0) {
    return absl::InternalError(
        absl::StrCat("cannot start nbdkit: posix_spawnp: ", std::strerror(spawn_error)));
  }
  server->pid_ = pid;

  const absl::Time deadline = absl::Now() + timeout;
  while (!PidFileWritten(server->pid_file_)) {
    int wait_status = 0;
    if (waitpid(pid, &wait_status, WNOHANG) == pid) {
      server->pid_ = -1;
      return absl::UnavailableError(absl::StrCat("'", absl::StrJoin(arguments, " "),
                                                 "' exited before accepting connections (",
                                                 DescribeExit(wait_status), ")"));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("'", absl::StrJoin(arguments, " "),
                                                      "' did not accept connections within ",
                                                      absl::FormatDuration(timeout)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return server;
}

EmbeddedServer::~EmbeddedServer() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int wait_status = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (waitpid(pid_, &wait_status, WNOHANG) == 0) {
      if (absl::Now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &wait_status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  unlink(socket_path_.c_str());
  unlink(pid_file_.c_str());
  rmdir(directory_.c_str());
}

std::string EmbeddedServer::uri() const {
  return absl::StrCat("nbd+unix:///?socket=", socket_path_);
}

absl::Status EmbeddedServer::PinTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  // Threads take their creator's mask, so pinning the ones that exist covers the rest.
  const std::string tasks = absl::StrCat("/proc/", pid_, "/task");
  DIR* directory = opendir(tasks.c_str());
  if (directory == nullptr) {
    return absl::InternalError(absl::StrCat("cannot list ", tasks, ": ", std::strerror(errno)));
  }
  absl::Status status;
  while (dirent* entry = readdir(directory)) {
    int thread_id = 0;
    if (!absl::SimpleAtoi(entry->d_name, &thread_id)) continue;  // "." and ".."
    if (sched_setaffinity(thread_id, sizeof(set), &set) != 0 && errno != ESRCH) {
      status = absl::InternalError(absl::StrCat("cannot pin nbdkit thread ", thread_id,
                                                " to CPU ", cpu, ": ", std::strerror(errno)));
    }
  }
  closedir(directory);
  return status;
}

}  // namespace nbdbench
