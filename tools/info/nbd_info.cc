// nbd-info — shows what an NBD server says about an export, using only nbdring's public API.
//
//   nbd-info URI                       size, transmission flags, block sizes, reply mode,
//                                      description and meta contexts of the URI's export
//   nbd-info --list URI                the exports the server lists (NBD_OPT_LIST)
//   nbd-info --json [--list] URI       the same as one JSON document on stdout, for scripts
//   --meta-context=NAME[,NAME...]      meta contexts (or namespace queries such as "qemu:")
//                                      to ask the server about; repeatable; the default is
//                                      base:allocation
//
// Exit status: 0 on success; 1 with a one-line "nbd-info: ..." message on stderr when the
// server cannot be reached or refuses (bad URI, unreachable, export not found); 2 for a
// command line that cannot be used.
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "nbdring/client.h"
#include "tools/common/command_line.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(bool, list, false, "List the server's exports (NBD_OPT_LIST) instead of describing one");
ABSL_FLAG(bool, json, false, "Print one JSON document instead of text");
ABSL_FLAG(std::vector<std::string>, meta_context, {"base:allocation"},
          "Meta context to query, also spelled --meta-context; repeat it (or give a "
          "comma-separated list) to query several");

namespace {

// One transmission flag as nbd-info names it, in text ("read-only") and JSON ("read_only").
struct FlagRow {
  const char* text_name;
  const char* json_name;
  uint16_t bit;
};

constexpr FlagRow kFlagRows[] = {
    {"read-only", "read_only", nbd::kFlagReadOnly},
    {"flush", "flush", nbd::kFlagSendFlush},
    {"fua", "fua", nbd::kFlagSendFua},
    {"trim", "trim", nbd::kFlagSendTrim},
    {"zero", "zero", nbd::kFlagSendWriteZeroes},
    {"fast-zero", "fast_zero", nbd::kFlagSendFastZero},
    {"cache", "cache", nbd::kFlagSendCache},
    {"df", "df", nbd::kFlagSendDf},
    {"multi-conn", "multi_conn", nbd::kFlagCanMultiConn},
    {"rotational", "rotational", nbd::kFlagRotational},
    {"resize", "resize", nbd::kFlagSendResize},
};

// "1048576" -> "1 MiB", "1572864" -> "1.5 MiB": binary units, one decimal only when needed.
std::string HumanSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  std::string number = absl::StrFormat("%.1f", value);
  if (absl::EndsWith(number, ".0")) number.resize(number.size() - 2);
  return absl::StrCat(number, " ", kUnits[unit]);
}

// Abseil flags cannot be named with a '-' and keep only the last of repeated flags, but the
// documented spelling is a repeatable --meta-context. Such arguments are taken out of argv
// here, before Abseil sees it; the values are returned in order.
absl::StatusOr<std::vector<std::string>> ExtractMetaContextArguments(int* argc, char** argv) {
  std::vector<std::string> values;
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    absl::string_view argument = argv[i];
    if (argument == "--") {
      // Everything after "--" is positional: keep it untouched.
      while (i < *argc) argv[kept++] = argv[i++];
      break;
    }
    bool matched = false;
    for (absl::string_view spelling : {"--meta-context", "--meta_context"}) {
      absl::string_view value;
      if (argument == spelling) {
        if (i + 1 >= *argc) {
          return absl::InvalidArgumentError(absl::StrCat(spelling, " needs a value"));
        }
        value = argv[++i];
      } else if (absl::StartsWith(argument, absl::StrCat(spelling, "="))) {
        value = argument.substr(spelling.size() + 1);
      } else {
        continue;
      }
      // A comma-separated list, as Abseil parses --meta_context=a,b.
      for (absl::string_view name : absl::StrSplit(value, ',')) {
        if (name.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat(spelling, " needs non-empty context names, got '", value, "'"));
        }
        values.emplace_back(name);
      }
      matched = true;
      break;
    }
    if (!matched) argv[kept++] = argv[i];
  }
  *argc = kept;
  argv[kept] = nullptr;
  return values;
}

int Fail(const absl::Status& status) {
  std::string message(status.message());
  // The contract is one line on stderr: fold any newline a server put into its message.
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "nbd-info: %s\n", message.c_str());
  return 1;
}

void PrintJson(const nlohmann::json& document) {
  std::printf("%s\n", document.dump(2).c_str());
}

int ListExports(const nbdring::ClientOptions& options, bool json) {
  absl::StatusOr<std::vector<nbd::ExportListing>> exports = nbdring::ListExports(options);
  if (!exports.ok()) return Fail(exports.status());
  if (json) {
    nlohmann::json document = {{"uri", options.uri}, {"exports", nlohmann::json::array()}};
    for (const nbd::ExportListing& listing : *exports) {
      document["exports"].push_back(
          {{"name", listing.name}, {"description", listing.description}});
    }
    PrintJson(document);
    return 0;
  }
  // One export per line: its name ("" for the default export, which has an empty name), then
  // a tab and its description when it has one.
  for (const nbd::ExportListing& listing : *exports) {
    const char* name = listing.name.empty() ? "\"\"" : listing.name.c_str();
    if (listing.description.empty()) {
      std::printf("%s\n", name);
    } else {
      std::printf("%s\t%s\n", name, listing.description.c_str());
    }
  }
  return 0;
}

int DescribeExport(const nbdring::ClientOptions& options, bool json) {
  absl::StatusOr<nbdring::ExportQuery> query = nbdring::QueryExport(options);
  if (!query.ok()) return Fail(query.status());
  const nbd::ExportInfo& info = query->info;
  const nbd::BlockSizeConstraints& block_size = info.block_size;

  if (json) {
    nlohmann::json flags = nlohmann::json::object();
    for (const FlagRow& row : kFlagRows) flags[row.json_name] = info.has_flag(row.bit);
    nlohmann::json negotiated = nlohmann::json::array();
    for (const nbd::MetaContext& context : info.meta_contexts) {
      negotiated.push_back({{"name", context.name}, {"id", context.id}});
    }
    nlohmann::json document = {
        {"uri", options.uri},
        {"export_name", info.name},
        {"description", info.description},
        {"size", info.size},
        {"size_human", HumanSize(info.size)},
        {"transmission_flags", info.transmission_flags},
        {"flags", flags},
        {"block_size",
         {{"advertised", block_size.advertised},
          {"minimum", block_size.minimum},
          {"preferred", block_size.preferred},
          {"maximum", block_size.maximum}}},
        {"reply_mode", nbd::ReplyModeName(info.reply_mode)},
        {"oldstyle", info.oldstyle},
        {"meta_contexts", negotiated},
        {"available_meta_contexts", query->available_meta_contexts},
    };
    PrintJson(document);
    return 0;
  }

  std::printf("export: \"%s\"\n", info.name.c_str());
  std::printf("size: %llu (%s)\n", static_cast<unsigned long long>(info.size),
              HumanSize(info.size).c_str());
  for (const FlagRow& row : kFlagRows) {
    std::printf("%s: %s\n", row.text_name, info.has_flag(row.bit) ? "yes" : "no");
  }
  // Without NBD_INFO_BLOCK_SIZE the numbers are the spec's defaults, not the server's word.
  const char* origin = block_size.advertised ? "" : " (not advertised; spec defaults)";
  std::printf("block-size: minimum %u, preferred %u, maximum %u%s\n", block_size.minimum,
              block_size.preferred, block_size.maximum, origin);
  std::printf("reply-mode: %s\n", nbd::ReplyModeName(info.reply_mode));
  std::printf("description: %s\n", info.description.empty() ? "(none)" : info.description.c_str());
  std::vector<std::string> negotiated;
  for (const nbd::MetaContext& context : info.meta_contexts) {
    negotiated.push_back(absl::StrCat(context.name, " (id ", context.id, ")"));
  }
  std::printf("meta-contexts: %s\n",
              negotiated.empty() ? "(none)" : absl::StrJoin(negotiated, ", ").c_str());
  std::printf("meta-contexts-offered: %s\n",
              query->available_meta_contexts.empty()
                  ? "(none)"
                  : absl::StrJoin(query->available_meta_contexts, ", ").c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<std::vector<std::string>> meta_contexts =
      ExtractMetaContextArguments(&argc, argv);
  if (!meta_contexts.ok()) {
    std::fprintf(stderr, "nbd-info: %s\n", std::string(meta_contexts.status().message()).c_str());
    return nbdtools::kExitUsage;
  }
  const std::vector<std::string> positional = nbdtools::ParseToolCommandLine(
      argc, argv,
      {"nbd-info",
       "shows an NBD export's size, flags, block sizes and meta contexts.\n"
       "usage: nbd-info [--json] [--meta-context=NAME]... URI\n"
       "       nbd-info [--json] --list URI",
       "tools/info/"});
  if (positional.size() != 1) {
    std::fprintf(stderr, "nbd-info: expected exactly one URI argument, got %zu (see --help)\n",
                 positional.size());
    return nbdtools::kExitUsage;
  }
  if (!meta_contexts->empty()) absl::SetFlag(&FLAGS_meta_context, *meta_contexts);

  nbdring::ClientOptions options;
  options.uri = positional[0];
  options.meta_contexts = absl::GetFlag(FLAGS_meta_context);
  bool json = absl::GetFlag(FLAGS_json);
  return absl::GetFlag(FLAGS_list) ? ListExports(options, json) : DescribeExport(options, json);
}
