// Ring threads are named "nbdring-ring-N" and run on the CPUs ring_cpus gives them; a CPU the
// process may not use fails Connect with a message naming it. Checked through /proc, as an
// operator would see them.
#include <sched.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;

std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// Thread name -> its Cpus_allowed_list, for this process's threads.
std::map<std::string, std::string> ThreadsAndCpus() {
  std::map<std::string, std::string> threads;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    const std::string name = ReadLine(task.path().string() + "/comm");
    std::ifstream status(task.path().string() + "/status");
    std::string line;
    while (std::getline(status, line)) {
      absl::string_view rest = line;
      if (absl::ConsumePrefix(&rest, "Cpus_allowed_list:")) {
        threads[name] = std::string(absl::StripAsciiWhitespace(rest));
      }
    }
  }
  return threads;
}

TEST(RingThreadsTest, NamedAndPinnedWhereRingCpusSays) {
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  int last_cpu = -1;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &allowed)) last_cpu = cpu;
  }
  ASSERT_GE(last_cpu, 0);

  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  options.connections = 2;
  options.threads = 2;
  options.ring_cpus = {last_cpu};
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::map<std::string, std::string> threads = ThreadsAndCpus();
  const std::string expected = absl::StrCat(last_cpu);
  ASSERT_TRUE(threads.count("nbdring-ring-0")) << "threads: " << threads.size();
  ASSERT_TRUE(threads.count("nbdring-ring-1"));
  EXPECT_EQ(threads.at("nbdring-ring-0"), expected);
  EXPECT_EQ(threads.at("nbdring-ring-1"), expected);
  EXPECT_TRUE((*client)->Close().ok());
}

TEST(RingThreadsTest, ACpuTheProcessMayNotUseIsRefused) {
  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  options.ring_cpus = {CPU_SETSIZE + 5};
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(client.status().message(), "ring_cpus")) << client.status();
  options.ring_cpus = {-1};
  EXPECT_FALSE(Client::Connect(options).ok());
}

}  // namespace
}  // namespace nbdring
