// tests/copy/copy_test_support.h — what the nbd-copy end-to-end tests share: where the binary
// is, shell quoting, reading a whole file, and the outcome of a run.
#ifndef NBDRING_TESTS_COPY_COPY_TEST_SUPPORT_H_
#define NBDRING_TESTS_COPY_COPY_TEST_SUPPORT_H_

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"

namespace nbdcopy::testing {

constexpr uint64_t kMiB = 1024 * 1024;

struct Outcome {
  int exit_status = -1;
  std::string err;
};

// The nbd-copy binary in the test's runfiles.
inline std::string CopyPath() {
  const char* runfiles = std::getenv("TEST_SRCDIR");
  return absl::StrCat(runfiles != nullptr ? runfiles : ".", "/nbdring/tools/nbd-copy");
}

inline std::string Quote(const std::string& text) { return absl::StrCat("'", text, "'"); }

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace nbdcopy::testing

#endif  // NBDRING_TESTS_COPY_COPY_TEST_SUPPORT_H_
