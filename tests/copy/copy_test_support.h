// tests/copy/copy_test_support.h — what the tools' end-to-end tests share: where a tool's
// binary is, shell quoting, reading a whole file, and running a command for its outcome.
#ifndef NBDRING_TESTS_COPY_COPY_TEST_SUPPORT_H_
#define NBDRING_TESTS_COPY_COPY_TEST_SUPPORT_H_

#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace nbdcopy::testing {

constexpr uint64_t kMiB = 1024 * 1024;

struct Outcome {
  int exit_status = -1;
  std::string err;
};

// A binary of //tools (e.g. "nbd-info") in the test's runfiles.
inline std::string ToolPath(const std::string& name) {
  const char* runfiles = std::getenv("TEST_SRCDIR");
  return absl::StrCat(runfiles != nullptr ? runfiles : ".", "/nbdring/tools/", name);
}

// The nbd-copy binary in the test's runfiles.
inline std::string CopyPath() { return ToolPath("nbd-copy"); }

inline std::string Quote(const std::string& text) { return absl::StrCat("'", text, "'"); }

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Runs `shell_command` (which names the programs itself) with stderr captured in
// `stderr_path`, echoing both to the test log.
inline Outcome RunShellCapturingStderr(const std::string& shell_command,
                                       const std::string& stderr_path) {
  const std::string command = absl::StrCat(shell_command, " 2>", Quote(stderr_path));
  const int status = std::system(command.c_str());
  Outcome outcome;
  outcome.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  outcome.err = ReadFile(stderr_path);
  std::cerr << "$ " << command << "\n" << outcome.err;
  return outcome;
}

}  // namespace nbdcopy::testing

#endif  // NBDRING_TESTS_COPY_COPY_TEST_SUPPORT_H_
