#include "tools/info/json_output.h"

#include <cstdint>
#include <iterator>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace nbdinfo {

std::string ExactSizeString(uint64_t bytes) {
  static constexpr const char* kSuffixes[] = {"", "K", "M", "G", "T", "P", "E"};
  size_t unit = 0;
  while (bytes != 0 && bytes % 1024 == 0 && unit + 1 < std::size(kSuffixes)) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrCat(bytes, kSuffixes[unit]);
}

nlohmann::ordered_json ExportJson(const nbdring::ExportQuery& query, const std::string& uri,
                                  const std::string& description) {
  const nbd::ExportInfo& info = query.info;
  nlohmann::ordered_json out;
  out["export-name"] = info.name;
  const std::string& shown = description.empty() ? info.description : description;
  if (!shown.empty()) out["description"] = shown;
  out["uri"] = uri;
  out["contexts"] = query.available_meta_contexts;
  out["is_rotational"] = info.rotational();
  out["is_read_only"] = info.read_only();
  out["can_cache"] = info.can_cache();
  out["can_df"] = info.can_df();
  out["can_fast_zero"] = info.can_fast_zero();
  out["can_flush"] = info.can_flush();
  out["can_fua"] = info.can_fua();
  out["can_multi_conn"] = info.can_multi_conn();
  out["can_trim"] = info.can_trim();
  out["can_zero"] = info.can_zero();
  // nbdinfo prints block sizes only when the server sent NBD_INFO_BLOCK_SIZE.
  if (info.block_size.advertised) {
    out["block_size_minimum"] = info.block_size.minimum;
    out["block_size_preferred"] = info.block_size.preferred;
    out["block_size_maximum"] = info.block_size.maximum;
  }
  out["export-size"] = info.size;
  out["export-size-str"] = ExactSizeString(info.size);
  // nbd-info's own.
  out["can_resize"] = info.can_resize();
  out["reply_mode"] = nbd::ReplyModeName(info.reply_mode);
  out["transmission_flags"] = info.transmission_flags;
  nlohmann::ordered_json negotiated = nlohmann::ordered_json::array();
  for (const nbd::MetaContext& context : info.meta_contexts) {
    negotiated.push_back({{"name", context.name}, {"id", context.id}});
  }
  out["meta_contexts"] = std::move(negotiated);
  return out;
}

nlohmann::ordered_json InfoDocument(const nbd::ExportInfo& info, nlohmann::ordered_json exports) {
  nlohmann::ordered_json document;
  // ExportInfo does not record whether a newstyle server was "fixed"; every server nbdring
  // negotiates options with (NBD_OPT_GO, structured replies) is, so newstyle-fixed it is.
  document["protocol"] = info.oldstyle ? "oldstyle" : "newstyle-fixed";
  document["TLS"] = info.tls;
  document["structured"] = info.structured_replies();
  document["exports"] = std::move(exports);
  return document;
}

}  // namespace nbdinfo
