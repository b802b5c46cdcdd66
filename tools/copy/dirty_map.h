// tools/copy/dirty_map.h — what an incremental copy (--dirty-bitmap=NAME) does with each part
// of its source, from two meta contexts the server describes side by side:
//   qemu:dirty-bitmap:NAME  flag bit 0 set: written since the bitmap was started ("dirty")
//   base:allocation         NBD_STATE_ZERO: reads as zeroes
// and read in lock-step:
//   dirty, data   -> data       (read from the source, written to the destination)
//   dirty, zero   -> zero       (the destination is zeroed there)
//   not dirty     -> unchanged  (the destination already holds it: skipped)
#ifndef NBDRING_TOOLS_COPY_DIRTY_MAP_H_
#define NBDRING_TOOLS_COPY_DIRTY_MAP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nbdring/operation.h"
#include "tools/copy/copy_plan.h"

namespace nbdcopy {

// The qemu:dirty-bitmap context's flag for "changed since the bitmap was started".
inline constexpr uint64_t kDirtyBitmapDirtyFlag = 1;

// "qemu:dirty-bitmap:NAME", the meta context qemu-nbd -B NAME exports.
std::string DirtyBitmapContext(absl::string_view bitmap_name);

// Ranges from `offset` for the extents a block status reply gave for each context, both
// starting at `offset`. They end where the shorter of the two descriptions ends (or at
// `size`), so the next query starts there. Without `allocation` (base:allocation not
// negotiated) every dirty byte is data. Empty when either description is.
std::vector<Range> CombineDirtyExtents(
    uint64_t offset, uint64_t size, absl::Span<const nbdring::Extent> bitmap,
    std::optional<absl::Span<const nbdring::Extent>> allocation);

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_DIRTY_MAP_H_
