// nbdring/operation.h — one request, owned by the caller (see nbdring/client.h for how it is
// submitted, and the threading and completion contract).
#ifndef NBDRING_OPERATION_H_
#define NBDRING_OPERATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "nbd/wire.h"

namespace nbdring {

using nbd::Command;
using nbd::Extent;

struct OperationState;  // the library's side of an Operation (not part of the API)

// A request owned by the caller. Fill in the public fields, then Client::Submit(). The object
// is the caller's again as soon as `on_complete` runs: it may be reused or resubmitted from
// inside the callback.
class Operation {
 public:
  Command command = Command::kRead;
  uint16_t flags = 0;  // nbd::kCmdFlag*
  uint64_t offset = 0;
  uint64_t length = 0;
  // kRead: destination of `length` bytes. kWrite: source. Unused otherwise.
  void* buffer = nullptr;

  // Called once when the request is complete.
  void (*on_complete)(Operation* operation, const absl::Status& status) = nullptr;
  // kBlockStatus: called for each extent list the server sends (one per meta context).
  // `context_id` is the context's id in Client::export_info().meta_contexts, whichever
  // connection carried the request (servers may number contexts per connection).
  void (*on_extents)(Operation* operation, uint32_t context_id,
                     absl::Span<const Extent> extents) = nullptr;
  // kRead (optional): called for each hole the server reported (the buffer range is zeroed
  // before this call), with the hole's offset relative to `offset`.
  void (*on_hole)(Operation* operation, uint64_t offset_in_request, uint64_t length) = nullptr;
  void* user_data = nullptr;

 private:
  // The library's bookkeeping while the operation is queued or in flight (queue links, split
  // parts, the submission id, the first error), kept inside the object so that submitting
  // allocates nothing. Opaque here; runtime/operation_state.h gives it its shape. Copying an
  // Operation copies the request fields above and starts this afresh.
  class StateStorage {
   public:
    StateStorage();
    ~StateStorage();
    StateStorage(const StateStorage&) : StateStorage() {}
    StateStorage& operator=(const StateStorage&) { return *this; }

   private:
    friend struct OperationState;
    alignas(8) unsigned char bytes_[64];
  };
  friend struct OperationState;
  StateStorage state_;
};

}  // namespace nbdring

#endif  // NBDRING_OPERATION_H_
