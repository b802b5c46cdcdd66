#include "tests/tools/bench_runner.h"

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace nbdbench::testing {
namespace {

std::string BenchPath() {
  const char* runfiles = std::getenv("TEST_SRCDIR");
  return absl::StrCat(runfiles != nullptr ? runfiles : ".", "/nbdring/tools/nbd-bench");
}

}  // namespace

Outcome RunBench(const std::vector<std::string>& arguments, const std::string& environment) {
  const char* temp = std::getenv("TEST_TMPDIR");
  const std::string stderr_path = absl::StrCat(temp != nullptr ? temp : "/tmp", "/bench.stderr");
  // By absolute path: `environment` may empty PATH.
  std::string command = absl::StrCat(environment, " /usr/bin/timeout 120 ", BenchPath());
  for (const std::string& argument : arguments) absl::StrAppend(&command, " '", argument, "'");
  absl::StrAppend(&command, " 2>", stderr_path, " </dev/null");
  Outcome outcome;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return outcome;
  char buffer[4096];
  size_t read = 0;
  while ((read = fread(buffer, 1, sizeof(buffer), pipe)) > 0) outcome.out.append(buffer, read);
  const int status = pclose(pipe);
  outcome.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream err(stderr_path);
  std::stringstream contents;
  contents << err.rdbuf();
  outcome.err = contents.str();
  std::cerr << "$ " << command << "\n" << outcome.out << outcome.err;
  return outcome;
}

}  // namespace nbdbench::testing
