// runtime/adaptive_limit.cc — the connection's side of an adaptive in-flight limit: every
// reply is a sample for its InflightLimiter (adaptive_limit.h), and admission follows the
// limit it answers with. Connection::StageBatch admits while fewer than admit_limit_ are in
// flight; a limit that rose takes effect at the ring's next Flush of this connection.
#include "runtime/adaptive_limit.h"

#include "runtime/clock.h"
#include "runtime/connection.h"

namespace nbdring {

void Connection::ObserveReply(const Slot& slot) {
  const int64_t now_ns = MonotonicNanoseconds();
  admit_limit_ = adaptive_->OnReply(now_ns, now_ns - slot.staged_ns, table_.in_use());
}

}  // namespace nbdring
