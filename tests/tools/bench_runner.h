// Runs the real nbd-bench binary from the test's runfiles and captures what it printed.
#ifndef NBDRING_TESTS_TOOLS_BENCH_RUNNER_H_
#define NBDRING_TESTS_TOOLS_BENCH_RUNNER_H_

#include <string>
#include <vector>

namespace nbdbench::testing {

struct Outcome {
  int exit_status = -1;
  std::string out;
  std::string err;
};

// Runs nbd-bench with `arguments`, each single-quoted for the shell (none contains a quote),
// after the shell words in `environment` (e.g. "PATH=/x"). Killed after 120 s, so a hang
// fails the test with exit status 124 instead of stalling it.
Outcome RunBench(const std::vector<std::string>& arguments, const std::string& environment = "");

}  // namespace nbdbench::testing

#endif  // NBDRING_TESTS_TOOLS_BENCH_RUNNER_H_
