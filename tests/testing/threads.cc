#include "tests/testing/threads.h"

#include <filesystem>
#include <fstream>
#include <system_error>
#include <thread>

namespace nbdring::testing {

int ThreadCount(const std::string& name_prefix) {
  int count = 0;
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", error)) {
    if (!name_prefix.empty()) {
      std::ifstream comm(task.path() / "comm");
      std::string name;
      std::getline(comm, name);
      if (name.rfind(name_prefix, 0) != 0) continue;
    }
    ++count;
  }
  return count;
}

int ThreadCountBaseline() {
  std::thread([] {}).join();
  return ThreadCount();
}

}  // namespace nbdring::testing
