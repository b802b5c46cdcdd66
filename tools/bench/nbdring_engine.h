// tools/bench/nbdring_engine.h — the benchmark driven through nbdring's public API, plus the
// pattern prefill and read-back check that every engine's runs rely on.
//
// The run uses the zero-allocation path: iodepth x connections Operation objects and their
// buffers are allocated before the clock starts, and each Operation is resubmitted from its
// own on_complete callback (on a ring thread) until the run ends.
#ifndef NBDRING_TOOLS_BENCH_NBDRING_ENGINE_H_
#define NBDRING_TOOLS_BENCH_NBDRING_ENGINE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tools/bench/run.h"

namespace nbdbench {

absl::StatusOr<RunResult> RunNbdring(const RunSpec& spec, RunControl& control);

// Writes the verification pattern over [offset, offset + length) with large pipelined writes.
absl::Status WritePattern(const std::string& uri, uint64_t offset, uint64_t length, int connections,
                          RunControl& control);
// Reads [offset, offset + length) back and compares every byte with the pattern; a mismatch
// is a DataLossError naming the first differing offset.
absl::Status CheckPattern(const std::string& uri, uint64_t offset, uint64_t length, int connections,
                          RunControl& control);

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_NBDRING_ENGINE_H_
