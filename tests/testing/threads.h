// tests/testing/threads.h — counting this process's threads (/proc/self/task), for tests
// that check what threads the library starts (none in caller-driven mode, exactly the
// runtime's ring threads with a shared Runtime).
#ifndef NBDRING_TESTS_TESTING_THREADS_H_
#define NBDRING_TESTS_TESTING_THREADS_H_

#include <string>

namespace nbdring::testing {

// Threads of this process; with `name_prefix`, only those whose name (comm) starts with it,
// e.g. "nbdring-ring-".
int ThreadCount(const std::string& name_prefix = "");

// ThreadCount() as a baseline to compare against later: sanitizers start a helper thread of
// their own with the process's first thread, so one is started and joined first.
int ThreadCountBaseline();

}  // namespace nbdring::testing

#endif  // NBDRING_TESTS_TESTING_THREADS_H_
