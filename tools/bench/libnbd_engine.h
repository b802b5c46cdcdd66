// tools/bench/libnbd_engine.h — the same workload through libnbd, the reference NBD client,
// written to be as fair as the nbdring engine: one handle per connection, all connected before
// the clock starts, the same requests in flight per connection, nbd_aio_pread/nbd_aio_pwrite
// into pre-allocated buffers (no copies, no read-buffer zeroing), and one poll(2) loop per
// thread over its handles' nbd_aio_get_fd/nbd_aio_get_direction.
//
// libnbd forbids calling into a handle from inside its own completion callback (the handle
// lock is held), so a completed request is queued in its thread's ready list by the callback
// and reissued right after the nbd_aio_notify_* call that completed it returns.
#ifndef NBDRING_TOOLS_BENCH_LIBNBD_ENGINE_H_
#define NBDRING_TOOLS_BENCH_LIBNBD_ENGINE_H_

#include "absl/status/statusor.h"
#include "tools/bench/run.h"

namespace nbdbench {

absl::StatusOr<RunResult> RunLibnbd(const RunSpec& spec, RunControl& control);

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_LIBNBD_ENGINE_H_
