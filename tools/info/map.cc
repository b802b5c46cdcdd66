#include "tools/info/map.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace nbdinfo {

absl::StatusOr<std::vector<MapRun>> CollectMap(nbdring::Client& client,
                                               const std::string& context) {
  const nbd::MetaContext* negotiated = client.export_info().FindMetaContext(context);
  if (negotiated == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("--map: server does not support metadata context \"", context, "\""));
  }
  const uint64_t size = client.size();
  std::vector<MapRun> runs;
  uint64_t offset = 0;
  while (offset < size) {
    // The whole rest: the client clamps a compact request to what 32 bits hold, and the
    // server may describe any prefix of it.
    std::vector<std::pair<uint32_t, std::vector<nbd::Extent>>> answers;
    absl::Status status = client.BlockStatusSync(size - offset, offset, &answers);
    if (!status.ok()) return status;
    uint64_t described = 0;
    for (const auto& [id, extents] : answers) {
      if (id != negotiated->id) continue;
      for (const nbd::Extent& extent : extents) {
        // A last extent reaching past the end of the export counts only up to the end.
        uint64_t length = std::min(extent.length, size - offset - described);
        if (length == 0) break;
        AppendExtent(runs, length, static_cast<uint32_t>(extent.flags));
        described += length;
      }
    }
    if (described == 0) {
      return absl::DataLossError(absl::StrCat("--map: server did not return any extents for ",
                                              context, " at offset ", offset));
    }
    offset += described;
  }
  return runs;
}

void AppendExtent(std::vector<MapRun>& runs, uint64_t length, uint32_t type) {
  if (!runs.empty() && runs.back().type == type) {
    runs.back().length += length;
    return;
  }
  uint64_t offset = runs.empty() ? 0 : runs.back().offset + runs.back().length;
  runs.push_back({offset, length, type});
}

std::optional<std::string> DescribeType(absl::string_view context, uint32_t type) {
  if (context == "base:allocation") {
    static constexpr const char* kAllocation[] = {"data", "hole", "zero", "hole,zero"};
    if (type < 4) return kAllocation[type];
  } else if (absl::StartsWith(context, "qemu:dirty-bitmap:")) {
    if (type == 0) return "clean";
    if (type == 1) return "dirty";
  } else if (context == "qemu:allocation-depth") {
    if (type == 0) return "absent";
    if (type == 1) return "local";
    return absl::StrCat("backing depth ", type);
  }
  return std::nullopt;
}

namespace {

// nbdinfo writes its JSON by hand; the same spacing keeps the outputs comparable byte for
// byte. Strings go through nlohmann for escaping.
std::string JsonDescription(const std::optional<std::string>& description) {
  if (!description) return "";
  return absl::StrCat(", \"description\": ", nlohmann::json(*description).dump());
}

std::string JsonArray(const std::vector<std::string>& items) {
  std::string text = "[\n";
  for (size_t i = 0; i < items.size(); ++i) {
    absl::StrAppend(&text, items[i], i + 1 < items.size() ? ",\n" : "");
  }
  absl::StrAppend(&text, "\n]\n");
  return text;
}

}  // namespace

std::string FormatMap(absl::string_view context, const std::vector<MapRun>& runs, bool json) {
  std::vector<std::string> items;
  std::string text;
  for (const MapRun& run : runs) {
    std::optional<std::string> description = DescribeType(context, run.type);
    if (json) {
      items.push_back(absl::StrFormat("{ \"offset\": %u, \"length\": %u, \"type\": %u%s}",
                                      run.offset, run.length, run.type,
                                      JsonDescription(description)));
    } else {
      absl::StrAppendFormat(&text, "%10u  %10u  %3u%s\n", run.offset, run.length, run.type,
                            description ? absl::StrCat("  ", *description) : "");
    }
  }
  return json ? JsonArray(items) : text;
}

std::string FormatMapTotals(absl::string_view context, const std::vector<MapRun>& runs,
                            uint64_t export_size, bool json) {
  if (export_size == 0) return json ? "[]\n" : "";
  std::map<uint32_t, uint64_t> bytes_by_type;  // ordered: types print in increasing order
  for (const MapRun& run : runs) bytes_by_type[run.type] += run.length;
  std::vector<std::string> items;
  std::string text;
  for (const auto& [type, bytes] : bytes_by_type) {
    if (bytes == 0) continue;
    double percent = 100.0 * static_cast<double>(bytes) / static_cast<double>(export_size);
    std::optional<std::string> description = DescribeType(context, type);
    if (json) {
      items.push_back(absl::StrFormat("{ \"size\": %u, \"percent\": %g, \"type\": %u%s }", bytes,
                                      percent, type, JsonDescription(description)));
    } else {
      absl::StrAppendFormat(&text, "%10u %5.1f%% %3u%s\n", bytes, percent, type,
                            description ? absl::StrCat(" ", *description) : "");
    }
  }
  return json ? JsonArray(items) : text;
}

}  // namespace nbdinfo
