// tools/copy/progress.h — the --progress line: bytes copied, percentage, rate and ETA.
//
// ProgressMeter remembers when the copy started; Line() formats one snapshot, e.g.
//   "  48.0 MiB / 64.0 MiB   75.0%   612.3 MiB/s   ETA 0:00:01"
// Rates are averaged over the whole run so far (a smooth ETA beats a jumpy one).
// --progress=FD gets nbdcopy's machine-readable form instead: "N/100\n", N = whole percent.
#ifndef NBDRING_TOOLS_COPY_PROGRESS_H_
#define NBDRING_TOOLS_COPY_PROGRESS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"

namespace nbdcopy {

// 1536 -> "1.5 KiB", 67108864 -> "64.0 MiB".
std::string HumanBytes(double bytes);
// 75 -> "0:01:15".
std::string HumanDuration(absl::Duration duration);

// nbdcopy's --progress=FD line: "75/100\n" (the percentage rounded down, 0..100). A source of
// unknown size (a stream) reads 0/100 until it is done.
std::string MachineProgressLine(uint64_t bytes_done, std::optional<uint64_t> total_bytes,
                                bool finished);

class ProgressMeter {
 public:
  explicit ProgressMeter(absl::Time start) : start_(start) {}
  // The line for `bytes_done` of `total_bytes` (unknown for a stream source) at `now`.
  std::string Line(uint64_t bytes_done, std::optional<uint64_t> total_bytes,
                   absl::Time now) const;

 private:
  absl::Time start_;
};

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_PROGRESS_H_
