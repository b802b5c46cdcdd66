#include "tools/copy/progress.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace nbdcopy {

std::string HumanBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  size_t unit = 0;
  while (bytes >= 1024.0 && unit + 1 < std::size(kUnits)) {
    bytes /= 1024.0;
    ++unit;
  }
  if (unit == 0) return absl::StrFormat("%.0f B", bytes);
  return absl::StrFormat("%.1f %s", bytes, kUnits[unit]);
}

std::string HumanDuration(absl::Duration duration) {
  const int64_t seconds = absl::ToInt64Seconds(duration);
  return absl::StrFormat("%d:%02d:%02d", seconds / 3600, seconds / 60 % 60, seconds % 60);
}

std::string MachineProgressLine(uint64_t bytes_done, std::optional<uint64_t> total_bytes,
                                bool finished) {
  uint64_t percent = 0;
  if (finished) {
    percent = 100;
  } else if (total_bytes.has_value() && *total_bytes > 0) {
    percent = std::min<uint64_t>(
        100, static_cast<uint64_t>(100.0 * static_cast<double>(bytes_done) /
                                   static_cast<double>(*total_bytes)));
  }
  return absl::StrCat(percent, "/100\n");
}

std::string ProgressMeter::Line(uint64_t bytes_done, std::optional<uint64_t> total_bytes,
                                absl::Time now) const {
  const double seconds = absl::ToDoubleSeconds(now - start_);
  const double rate = seconds > 0 ? static_cast<double>(bytes_done) / seconds : 0;
  if (!total_bytes.has_value()) {
    return absl::StrCat(HumanBytes(static_cast<double>(bytes_done)), "   ",
                        HumanBytes(rate), "/s");
  }
  const double percent =
      *total_bytes == 0 ? 100.0
                        : 100.0 * static_cast<double>(bytes_done) /
                              static_cast<double>(*total_bytes);
  std::string eta = "--:--:--";
  if (bytes_done >= *total_bytes) {
    eta = HumanDuration(absl::ZeroDuration());
  } else if (rate > 0) {
    eta = HumanDuration(
        absl::Seconds(static_cast<double>(*total_bytes - bytes_done) / rate));
  }
  return absl::StrFormat("%s / %s   %5.1f%%   %s/s   ETA %s",
                         HumanBytes(static_cast<double>(bytes_done)),
                         HumanBytes(static_cast<double>(*total_bytes)), percent,
                         HumanBytes(rate), eta);
}

}  // namespace nbdcopy
