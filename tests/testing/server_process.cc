#include "tests/testing/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nbd::testing {
namespace {

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

bool CanConnectUnix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof(address.sun_path), "%s", path.c_str());
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return ok;
}

bool CanConnectTcp(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return ok;
}

// A port the kernel just handed out and released; a race with other processes is possible
// but unlikely on a test machine, and Spawn fails loudly if the server cannot bind it.
absl::StatusOr<int> PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    close(fd);
    return ErrnoStatus("bind/getsockname");
  }
  close(fd);
  return ntohs(address.sin_port);
}

}  // namespace

absl::Status WriteDiskImage(const std::string& path, uint64_t size,
                            const std::function<uint8_t(uint64_t offset)>& byte_at) {
  std::vector<char> bytes(size);
  for (uint64_t offset = 0; offset < size; ++offset) {
    bytes[offset] = static_cast<char>(byte_at(offset));
  }
  std::ofstream image(path, std::ios::binary);
  image.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  image.close();
  if (!image) return absl::InternalError(absl::StrCat("cannot write the disk image ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TempDir>> TempDir::Create() {
  char path[] = "/tmp/nbdr-XXXXXX";
  if (mkdtemp(path) == nullptr) return ErrnoStatus("mkdtemp /tmp/nbdr-XXXXXX");
  return std::unique_ptr<TempDir>(new TempDir(path));
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

absl::StatusOr<pid_t> ServerProcess::Launch(const std::vector<std::string>& argv,
                                            const std::string& log_path) {
  // Everything the child needs is prepared here: after fork() in a multi-threaded process
  // the child may only call async-signal-safe functions (no allocation).
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return ErrnoStatus("fork");
  if (pid == 0) {
    // The server must not outlive a crashed test.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) {
      dup2(log, STDOUT_FILENO);
      dup2(log, STDERR_FILENO);
    }
    execvp(args[0], args.data());
    _exit(127);  // the parent reports the exit status and the log
  }
  return pid;
}

absl::Status ServerProcess::AwaitReady(absl::Duration ready_timeout) {
  absl::Time deadline = absl::Now() + ready_timeout;
  while (true) {
    bool ready = socket_path_.empty() ? CanConnectTcp(port_) : CanConnectUnix(socket_path_);
    if (ready) return absl::OkStatus();
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      std::ifstream log(dir_->File("server.log"));
      std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
      return absl::FailedPreconditionError(
          absl::StrCat("'", absl::StrJoin(argv_, " "), "' exited before accepting connections (",
                       WIFEXITED(status) ? absl::StrCat("exit ", WEXITSTATUS(status))
                                         : absl::StrCat("signal ", WTERMSIG(status)),
                       "): ", text));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "'", absl::StrJoin(argv_, " "), "' did not accept connections within ",
          absl::FormatDuration(ready_timeout)));
    }
    usleep(5000);
  }
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Spawn(
    std::unique_ptr<TempDir> dir, const std::vector<std::string>& argv, std::string socket_path,
    int port, absl::Duration ready_timeout) {
  auto pid = Launch(argv, dir->File("server.log"));
  if (!pid.ok()) return pid.status();
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  server->dir_ = std::move(dir);
  server->argv_ = argv;
  server->socket_path_ = std::move(socket_path);
  server->port_ = port;
  server->pid_ = *pid;
  absl::Status ready = server->AwaitReady(ready_timeout);
  if (!ready.ok()) return ready;
  return server;
}

absl::Status ServerProcess::Restart() {
  if (!reaped_) return absl::FailedPreconditionError("Restart needs the server stopped (Kill, Wait)");
  if (!socket_path_.empty()) unlink(socket_path_.c_str());
  auto pid = Launch(argv_, dir_->File("server.log"));
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  reaped_ = false;
  return AwaitReady(absl::Seconds(20));
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::StartNbdkit(
    const std::vector<std::string>& args) {
  auto dir = TempDir::Create();
  if (!dir.ok()) return dir.status();
  std::string socket = (*dir)->File("nbdkit.sock");
  std::vector<std::string> argv = {"nbdkit", "-f", "--exit-with-parent", "-U", socket};
  argv.insert(argv.end(), args.begin(), args.end());
  return Spawn(*std::move(dir), argv, socket, 0, absl::Seconds(20));
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::StartNbdkitTcp(
    const std::vector<std::string>& args) {
  auto dir = TempDir::Create();
  if (!dir.ok()) return dir.status();
  auto port = PickFreePort();
  if (!port.ok()) return port.status();
  std::vector<std::string> argv = {"nbdkit", "-f", "--exit-with-parent", "-i", "127.0.0.1",
                                   "-p", absl::StrCat(*port)};
  argv.insert(argv.end(), args.begin(), args.end());
  return Spawn(*std::move(dir), argv, "", *port, absl::Seconds(20));
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::StartQemuNbd(
    const std::string& file, const std::string& format, int shared,
    const std::vector<std::string>& extra_args) {
  auto dir = TempDir::Create();
  if (!dir.ok()) return dir.status();
  std::string socket = (*dir)->File("qemu-nbd.sock");
  std::vector<std::string> argv = {"qemu-nbd", "-f", format, "-t", absl::StrCat("--shared=", shared),
                                   "-k", socket};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  argv.push_back(file);
  return Spawn(*std::move(dir), argv, socket, 0, absl::Seconds(20));
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 400; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        reaped_ = true;
        break;
      }
      usleep(5000);
    }
    if (!reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
}

std::string ServerProcess::uri(const std::string& export_name) const {
  if (socket_path_.empty()) return absl::StrCat("nbd://127.0.0.1:", port_, "/", export_name);
  return absl::StrCat("nbd+unix:///", export_name, "?socket=", socket_path_);
}

void ServerProcess::Kill(int signal) {
  if (pid_ > 0 && !reaped_) kill(pid_, signal);
}

absl::Status ServerProcess::Wait() {
  if (reaped_) return absl::OkStatus();
  int status = 0;
  if (waitpid(pid_, &status, 0) != pid_) return ErrnoStatus("waitpid");
  reaped_ = true;
  return absl::OkStatus();
}

}  // namespace nbd::testing
