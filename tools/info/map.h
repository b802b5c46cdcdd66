// tools/info/map.h — `nbd-info --map[=CONTEXT] [--totals] [--json]`: the export's extents in
// one meta context (base:allocation by default), printed as nbdinfo (libnbd 1.14) prints them
// so that scripts written for nbdinfo read either tool's output:
//
//   --map            "%10u  %10u  %3u  description" per run of extents of one type
//   --map --totals   "%10u %5.1f%% %3u description" per type, in increasing type order
//   --json           the same as a JSON array ({offset, length, type, description} or
//                    {size, percent, type, description}); description only when known
#ifndef NBDRING_TOOLS_INFO_MAP_H_
#define NBDRING_TOOLS_INFO_MAP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nbdring/client.h"

namespace nbdinfo {

// One run of the map: neighbouring extents of the same type are one run.
struct MapRun {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint32_t type = 0;
};

// Asks the server for the extents of `context` (which `client` must have negotiated) over the
// whole export, one NBD_CMD_BLOCK_STATUS after another from where the last answer ended.
// Errors: a failed request, or an answer that describes nothing.
absl::StatusOr<std::vector<MapRun>> CollectMap(nbdring::Client& client,
                                               const std::string& context);

// Appends an extent, merging it into the last run when the type is the same.
void AppendExtent(std::vector<MapRun>& runs, uint64_t length, uint32_t type);

// What a type means in `context` ("hole,zero", "dirty", "backing depth 2"), or nullopt.
std::optional<std::string> DescribeType(absl::string_view context, uint32_t type);

std::string FormatMap(absl::string_view context, const std::vector<MapRun>& runs, bool json);
// `export_size` is the 100% of the percentages.
std::string FormatMapTotals(absl::string_view context, const std::vector<MapRun>& runs,
                            uint64_t export_size, bool json);

}  // namespace nbdinfo

#endif  // NBDRING_TOOLS_INFO_MAP_H_
