#include "tools/info/flag_query.h"

#include <string>
#include <vector>

#include "absl/strings/str_join.h"

namespace nbdinfo {
namespace {

using nbdring::ExportQuery;

constexpr FlagQuery kQueries[] = {
    // Reaching the export and negotiating is the whole test; every server can read.
    {"connect", [](const ExportQuery&) { return true; }},
    {"read", [](const ExportQuery&) { return true; }},
    {"write", [](const ExportQuery& q) { return !q.info.read_only(); }},
    {"read-only", [](const ExportQuery& q) { return q.info.read_only(); }},
    {"rotational", [](const ExportQuery& q) { return q.info.rotational(); }},
    {"tls", [](const ExportQuery& query) { return query.info.tls; }},
    {"cache", [](const ExportQuery& q) { return q.info.can_cache(); }},
    {"df", [](const ExportQuery& q) { return q.info.can_df(); }},
    {"fast-zero", [](const ExportQuery& q) { return q.info.can_fast_zero(); }},
    {"flush", [](const ExportQuery& q) { return q.info.can_flush(); }},
    {"fua", [](const ExportQuery& q) { return q.info.can_fua(); }},
    {"multi-conn", [](const ExportQuery& q) { return q.info.can_multi_conn(); }},
    {"trim", [](const ExportQuery& q) { return q.info.can_trim(); }},
    {"zero", [](const ExportQuery& q) { return q.info.can_zero(); }},
    {"structured-reply", [](const ExportQuery& q) { return q.info.structured_replies(); }},
    // nbd-info's own: not in nbdinfo 1.14.
    {"block-status", [](const ExportQuery& q) { return !q.info.meta_contexts.empty(); }},
    {"extended-headers", [](const ExportQuery& q) { return q.info.extended_headers(); },
     /*offer_extended_headers=*/true},
};

}  // namespace

const FlagQuery* FindFlagQuery(absl::string_view name) {
  for (const FlagQuery& query : kQueries) {
    if (name == query.name) return &query;
  }
  return nullptr;
}

std::string FlagQueryNames() {
  std::vector<std::string> names;
  for (const FlagQuery& query : kQueries) names.emplace_back(query.name);
  return absl::StrJoin(names, ", ");
}

}  // namespace nbdinfo
