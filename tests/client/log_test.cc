// ClientOptions::log and NBDRING_DEBUG against a real nbdkit: what each level reports, and
// that a failure reaches the hook.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;

class Captured {
 public:
  std::function<void(LogLevel, absl::string_view)> Hook() {
    return [this](LogLevel level, absl::string_view message) {
      std::lock_guard<std::mutex> lock(mutex_);
      lines_.push_back({level, std::string(message)});
    };
  }
  int Count(LogLevel level, absl::string_view text) {
    std::lock_guard<std::mutex> lock(mutex_);
    int found = 0;
    for (const auto& [line_level, line] : lines_) {
      found += line_level == level && absl::StrContains(line, text) ? 1 : 0;
    }
    return found;
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<LogLevel, std::string>> lines_;
};

TEST(LogTest, DebugShowsEachRequestAndReply) {
  auto server = ServerProcess::StartNbdkit({"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  Captured captured;
  ClientOptions options;
  options.uri = (*server)->uri();
  options.log = captured.Hook();
  options.log_level = LogLevel::kDebug;
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> buffer(4096);
  ASSERT_TRUE((*client)->PreadSync(buffer.data(), buffer.size(), 8192).ok());
  ASSERT_TRUE((*client)->PwriteSync(buffer.data(), buffer.size(), 0).ok());
  ASSERT_TRUE((*client)->Close().ok());
  EXPECT_EQ(captured.Count(LogLevel::kInfo, "connecting to nbd+unix"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kInfo, "negotiated export '': size 8388608"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kInfo, "io_uring:"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kDebug, "request NBD_CMD_READ"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kDebug, "offset 8192 length 4096"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kDebug, "request NBD_CMD_WRITE"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kDebug, "NBD_CMD_READ: OK"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kDebug, "NBD_CMD_WRITE: OK"), 1);
  EXPECT_EQ(captured.Count(LogLevel::kInfo, "closing"), 1);
}

TEST(LogTest, InfoLeavesRequestsOutAndErrorsReachTheHook) {
  auto server = ServerProcess::StartNbdkit({"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  Captured captured;
  ClientOptions options;
  options.uri = (*server)->uri();
  options.log = captured.Hook();  // kInfo by default
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> buffer(4096);
  ASSERT_TRUE((*client)->PreadSync(buffer.data(), buffer.size(), 0).ok());
  EXPECT_EQ(captured.Count(LogLevel::kDebug, "request"), 0);
  EXPECT_EQ(captured.Count(LogLevel::kInfo, "negotiated export"), 1);
  (*server)->Kill(SIGKILL);
  ASSERT_TRUE((*server)->Wait().ok());
  EXPECT_FALSE((*client)->PreadSync(buffer.data(), buffer.size(), 0).ok());
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return captured.Count(LogLevel::kError, "connection failed") == 1; },
      absl::Seconds(10)));
}

TEST(LogTest, NbdringDebugPrintsToStderrWithoutAHook) {
  auto server = ServerProcess::StartNbdkit({"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string path = (*server)->dir().File("stderr.txt");
  const int saved = dup(STDERR_FILENO);
  const int file = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(file, 0);
  dup2(file, STDERR_FILENO);
  setenv("NBDRING_DEBUG", "1", 1);
  {
    ClientOptions options;
    options.uri = (*server)->uri();
    auto client = Client::Connect(options);
    if (client.ok()) {
      std::vector<uint8_t> buffer(4096);
      (*client)->PreadSync(buffer.data(), buffer.size(), 0).IgnoreError();
    }
  }
  unsetenv("NBDRING_DEBUG");
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(file);
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, ::testing::HasSubstr("nbdring: connecting to"));
  EXPECT_THAT(text, ::testing::HasSubstr("request NBD_CMD_READ cookie"));
  EXPECT_THAT(text, ::testing::HasSubstr("NBD_CMD_READ: OK"));
}

}  // namespace
}  // namespace nbdring
