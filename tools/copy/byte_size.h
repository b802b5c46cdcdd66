// tools/copy/byte_size.h — a byte count as nbd-copy's flags spell it: "4096", "256k", "1m",
// "2G" (binary multiples: k = 1024). Parsed by nbd-copy itself rather than by Abseil's flag
// parser, so that a bad value is a usage error (exit status 2) with a message naming it.
#ifndef NBDRING_TOOLS_COPY_BYTE_SIZE_H_
#define NBDRING_TOOLS_COPY_BYTE_SIZE_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace nbdcopy {

// "256k" -> 262144. Suffixes k, m, g, t (either case, optional trailing "b"/"iB").
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_BYTE_SIZE_H_
