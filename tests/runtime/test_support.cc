#include "tests/runtime/test_support.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"

extern char** environ;

namespace nbdring::testing {
namespace {

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

std::string ReadTextFile(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() > limit) text = absl::StrCat(text.substr(0, limit), "...");
  return text;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return absl::StrCat("wait status ", status);
}

}  // namespace

std::vector<uint8_t> RandomBytes(size_t size, uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::vector<uint8_t> bytes(size);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t word = generator();
    std::memcpy(&bytes[i], &word, 8);
  }
  if (i < size) {
    uint64_t word = generator();
    std::memcpy(&bytes[i], &word, size - i);
  }
  return bytes;
}

namespace {

// Spawns `argv` with stdin from /dev/null and stdout/stderr into the given files (the same
// file for both is fine), and waits up to `timeout`, killing it then.
absl::StatusOr<int> SpawnAndWait(const std::vector<std::string>& argv,
                                 const std::string& stdout_path,
                                 const std::string& stderr_path, absl::Duration timeout) {
  std::string command_line = absl::StrJoin(argv, " ");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (stderr_path == stdout_path) {
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0600);
  }
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int spawn_error = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error != 0) {
    return absl::InternalError(
        absl::StrCat("cannot start '", command_line, "': ", std::strerror(spawn_error)));
  }
  absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (true) {
    pid_t waited = waitpid(pid, &status, WNOHANG);
    if (waited == pid) return status;
    if (waited < 0 && errno != EINTR) {
      return ErrnoStatus(absl::StrCat("waitpid for '", command_line, "'"));
    }
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return absl::DeadlineExceededError(absl::StrCat(
          "'", command_line, "' did not finish within ", absl::FormatDuration(timeout), ": ",
          ReadTextFile(stdout_path, 2000)));
    }
    usleep(2000);
  }
}

}  // namespace

absl::Status RunCommand(const std::vector<std::string>& argv, absl::Duration timeout) {
  auto dir = nbd::testing::TempDir::Create();
  if (!dir.ok()) return dir.status();
  std::string output_path = (*dir)->File("output");
  absl::StatusOr<int> status = SpawnAndWait(argv, output_path, output_path, timeout);
  if (!status.ok()) return status.status();
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat("'", absl::StrJoin(argv, " "), "' failed (",
                                            DescribeWaitStatus(*status),
                                            "): ", ReadTextFile(output_path, 2000)));
  }
  return absl::OkStatus();
}

absl::StatusOr<CommandResult> RunAndCapture(const std::vector<std::string>& argv,
                                            absl::Duration timeout) {
  auto dir = nbd::testing::TempDir::Create();
  if (!dir.ok()) return dir.status();
  std::string stdout_path = (*dir)->File("stdout");
  std::string stderr_path = (*dir)->File("stderr");
  absl::StatusOr<int> status = SpawnAndWait(argv, stdout_path, stderr_path, timeout);
  if (!status.ok()) return status.status();
  CommandResult result;
  result.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
  result.standard_output = ReadTextFile(stdout_path, 1 << 20);
  result.standard_error = ReadTextFile(stderr_path, 1 << 20);
  return result;
}

absl::StatusOr<std::vector<uint8_t>> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  return bytes;
}

absl::Status WriteWholeFile(const std::string& path, absl::Span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

absl::Status CreateSparseFile(const std::string& path, uint64_t size) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(absl::StrCat("create '", path, "'"));
  int result = ftruncate(fd, static_cast<off_t>(size));
  int saved_errno = errno;
  close(fd);
  errno = saved_errno;
  if (result != 0) return ErrnoStatus(absl::StrCat("ftruncate '", path, "' to ", size));
  return absl::OkStatus();
}

std::string DescribeDifference(absl::Span<const uint8_t> expected, absl::Span<const uint8_t> got) {
  if (expected.size() != got.size()) {
    return absl::StrCat("sizes differ: expected ", expected.size(), " bytes, got ", got.size());
  }
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] != got[i]) {
      size_t differing = 0;
      for (size_t j = i; j < expected.size(); ++j) differing += expected[j] != got[j];
      return absl::StrFormat("first difference at offset %u: expected 0x%02x, got 0x%02x (%u "
                             "differing bytes in all)",
                             i, expected[i], got[i], differing);
    }
  }
  return "";
}

int64_t ExtentFlagsAt(absl::Span<const Extent> extents, uint64_t start, uint64_t offset) {
  uint64_t position = start;
  for (const Extent& extent : extents) {
    if (offset >= position && offset - position < extent.length) {
      return static_cast<int64_t>(extent.flags);
    }
    position += extent.length;
  }
  return -1;
}

absl::StatusOr<std::vector<Extent>> ExtentsOf(
    const Client& client, const std::string& context_name,
    const std::vector<std::pair<uint32_t, std::vector<Extent>>>& extents_by_context) {
  const nbd::MetaContext* context = client.export_info().FindMetaContext(context_name);
  if (context == nullptr) {
    return absl::NotFoundError(absl::StrCat("meta context '", context_name, "' not negotiated"));
  }
  for (const auto& [id, extents] : extents_by_context) {
    if (id == context->id) return extents;
  }
  return absl::NotFoundError(absl::StrCat("no extents for meta context '", context_name,
                                          "' (id ", context->id, ") in the reply"));
}

absl::StatusOr<std::vector<Extent>> ExtentsFor(Client& client, const std::string& context_name,
                                               uint64_t length, uint64_t offset, uint16_t flags) {
  std::vector<std::pair<uint32_t, std::vector<Extent>>> extents;
  absl::Status status = client.BlockStatusSync(length, offset, &extents, flags);
  if (!status.ok()) return status;
  return ExtentsOf(client, context_name, extents);
}

::testing::AssertionResult WritableWithEveryCommand(const ExportInfo& info) {
  struct Capability {
    bool (ExportInfo::*advertised)() const;
    const char* flag;
  };
  static constexpr Capability kCapabilities[] = {
      {&ExportInfo::can_flush, "NBD_FLAG_SEND_FLUSH"},
      {&ExportInfo::can_fua, "NBD_FLAG_SEND_FUA"},
      {&ExportInfo::can_trim, "NBD_FLAG_SEND_TRIM"},
      {&ExportInfo::can_zero, "NBD_FLAG_SEND_WRITE_ZEROES"},
      {&ExportInfo::can_fast_zero, "NBD_FLAG_SEND_FAST_ZERO"},
      {&ExportInfo::can_cache, "NBD_FLAG_SEND_CACHE"},
      {&ExportInfo::can_df, "NBD_FLAG_SEND_DF"},
      {&ExportInfo::can_multi_conn, "NBD_FLAG_CAN_MULTI_CONN"},
  };
  std::vector<std::string> wrong;
  if (info.read_only()) wrong.push_back("NBD_FLAG_READ_ONLY set");
  for (const Capability& capability : kCapabilities) {
    if (!(info.*capability.advertised)()) {
      wrong.push_back(absl::StrCat(capability.flag, " missing"));
    }
  }
  if (wrong.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << absl::StrJoin(wrong, ", ")
         << absl::StrFormat(" (transmission flags 0x%04x)", info.transmission_flags);
}

Operation MakeOperation(Command command, uint64_t offset, uint64_t length, void* buffer,
                        uint16_t flags) {
  Operation operation;
  operation.command = command;
  operation.offset = offset;
  operation.length = length;
  operation.buffer = buffer;
  operation.flags = flags;
  return operation;
}

void ExpectRefused(Client& client, Operation operation, absl::StatusCode code,
                   const std::string& phrase) {
  SCOPED_TRACE(absl::StrCat("command ", nbd::CommandName(operation.command), " offset ",
                            operation.offset, " length ", operation.length, " flags ",
                            operation.flags));
  uint64_t sent_before = client.stats().wire_requests;
  absl::Status validated = client.Validate(operation);
  EXPECT_EQ(validated.code(), code) << validated;
  EXPECT_THAT(std::string(validated.message()), ::testing::HasSubstr(phrase));

  CompletionTracker tracker;
  tracker.Submit(client, &operation);
  ASSERT_TRUE(tracker.WaitFor(&operation)) << "on_complete did not run";
  absl::Status submitted = tracker.status(&operation);
  EXPECT_EQ(submitted.code(), code) << submitted;
  EXPECT_THAT(std::string(submitted.message()), ::testing::HasSubstr(phrase));
  EXPECT_TRUE(tracker.ExactlyOnce());
  EXPECT_EQ(client.stats().wire_requests, sent_before) << "a refused request was sent";
}

ClientOptions WithMetaContexts(std::vector<std::string> names) {
  ClientOptions options;
  options.meta_contexts = std::move(names);
  return options;
}

absl::StatusOr<std::unique_ptr<Client>> ConnectTo(const std::string& uri, ClientOptions options) {
  options.uri = uri;
  return Client::Connect(options);
}

absl::StatusOr<std::unique_ptr<OneShotNbdServer>> OneShotNbdServer::Start(
    const std::string& file, const std::string& name,
    const std::vector<std::string>& extra_export_lines) {
  auto dir = nbd::testing::TempDir::Create();
  if (!dir.ok()) return dir.status();
  std::unique_ptr<OneShotNbdServer> server(new OneShotNbdServer());
  server->dir_ = *std::move(dir);
  server->socket_path_ = server->dir_->File("nbd-server.sock");
  std::string config = server->dir_->File("nbd-server.conf");
  std::string log_path = server->dir_->File("nbd-server.log");
  {
    // No "port" key: nbd-server then listens on the Unix socket only ("port = 0" would mean
    // inetd mode, serving stdin).
    std::ofstream out(config);
    out << "[generic]\n"
        << "    unixsock = " << server->socket_path_ << "\n"
        << "    allowlist = true\n"
        << "[" << name << "]\n"
        << "    exportname = " << file << "\n";
    for (const std::string& line : extra_export_lines) out << "    " << line << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write '", config, "'"));
  }

  auto pid = nbd::testing::ServerProcess::Launch({"nbd-server", "-C", config, "-d"}, log_path);
  if (!pid.ok()) return pid.status();
  server->pid_ = *pid;

  // /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; Flags 00010000 is
  // __SO_ACCEPTCON, i.e. listen() has been called.
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (true) {
    std::ifstream table("/proc/net/unix");
    std::string line;
    while (std::getline(table, line)) {
      std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (fields.size() >= 8 && fields[7] == server->socket_path_ && fields[3] == "00010000") {
        return server;
      }
    }
    int status = 0;
    if (waitpid(*pid, &status, WNOHANG) == *pid) {
      server->pid_ = -1;
      return absl::FailedPreconditionError(
          absl::StrCat("nbd-server exited before listening (", DescribeWaitStatus(status),
                       "): ", ReadTextFile(log_path, 2000)));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("nbd-server did not listen within 20s");
    }
    usleep(5000);
  }
}

OneShotNbdServer::~OneShotNbdServer() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  for (int i = 0; i < 400; ++i) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) return;
    usleep(5000);
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
}

std::string OneShotNbdServer::uri(const std::string& export_name) const {
  return absl::StrCat("nbd+unix:///", export_name, "?socket=", socket_path_);
}

}  // namespace nbdring::testing
