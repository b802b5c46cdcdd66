// tools/info/json_output.h — `nbd-info --json`: nbdinfo's (libnbd 1.14) document shape and
// key names, so scripts written for `nbdinfo --json` work unchanged:
//
//   {"protocol": "newstyle-fixed", "TLS": false, "structured": true,
//    "exports": [{"export-name", "description" (when there is one), "uri", "contexts",
//                 "is_rotational", "is_read_only", "can_cache", "can_df", "can_fast_zero",
//                 "can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero",
//                 "block_size_minimum/preferred/maximum" (when the server sent them),
//                 "export-size", "export-size-str", ...}]}
//
// nbdinfo's "content" (file(1) run on the first sectors) is not produced. Keys only nbd-info
// has follow nbdinfo's: "can_resize", "reply_mode", "transmission_flags" and "meta_contexts"
// (the contexts negotiated, with the server's ids; "contexts" is what the server lists).
#ifndef NBDRING_TOOLS_INFO_JSON_OUTPUT_H_
#define NBDRING_TOOLS_INFO_JSON_OUTPUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nbdring/client.h"
#include "nlohmann/json.hpp"

namespace nbdinfo {

// One element of "exports". `description` overrides the export's own (nbdinfo prefers the
// one NBD_OPT_LIST gave) when not empty.
nlohmann::ordered_json ExportJson(const nbdring::ExportQuery& query, const std::string& uri,
                                  const std::string& description = "");

// The whole document around `exports`; the protocol keys come from `info`.
nlohmann::ordered_json InfoDocument(const nbd::ExportInfo& info, nlohmann::ordered_json exports);

// nbdinfo's "export-size-str": the size in the largest of K, M, G, T, P, E that divides it
// exactly ("1M", "2075312K"), else the plain number.
std::string ExactSizeString(uint64_t bytes);

}  // namespace nbdinfo

#endif  // NBDRING_TOOLS_INFO_JSON_OUTPUT_H_
