// nbd-info — shows what an NBD server says about an export, using only nbdring's public API.
// Its modes and their spellings follow libnbd's nbdinfo (1.14), so scripts can use either:
//
//   nbd-info URI                       size, transmission flags, block sizes, reply mode,
//                                      description and meta contexts of the URI's export
//   nbd-info --size URI                the size in bytes, alone
//   nbd-info --can NAME URI            no output; exit 0 if the export can, 2 if it cannot
//   nbd-info --is NAME URI             (names: tools/info/flag_query.h)
//   nbd-info --map[=CONTEXT] [--totals] URI
//                                      the extents of a meta context (default base:allocation)
//                                      as nbdinfo prints them, or a summary per type
//   nbd-info --list URI (or -L)        the exports the server lists (NBD_OPT_LIST)
//   --json                             JSON instead of text, with nbdinfo's key names
//   --meta-context=NAME[,NAME...]      meta contexts (or namespace queries such as "qemu:")
//                                      to ask the server about; repeatable; the default is
//                                      base:allocation
//
// Exit status: 0 on success (and "true" for --can/--is); 2 for "false" from --can/--is; 1 with
// a one-line "nbd-info: ..." message on stderr when the server cannot be reached or refuses
// (bad URI, unreachable, export not found, context not offered), or — as nbdinfo does — for an
// unknown --can/--is name or modes that cannot be combined. Other unusable command lines exit
// 2 as in every nbdring tool, except with --can/--is, where 2 means "false" and they exit 1.
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <memory>
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
#include "tools/info/arguments.h"
#include "tools/info/flag_query.h"
#include "tools/info/json_output.h"
#include "tools/info/map.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(bool, list, false,
          "List the server's exports (NBD_OPT_LIST) instead of describing one; also -L");
ABSL_FLAG(bool, json, false, "Print JSON instead of text (nbdinfo's key names)");
ABSL_FLAG(std::vector<std::string>, meta_context, {"base:allocation"},
          "Meta context to query, also spelled --meta-context; repeat it (or give a "
          "comma-separated list) to query several");
ABSL_FLAG(bool, size, false, "Print only the export's size in bytes");
ABSL_FLAG(std::string, can, "",
          "Print nothing; exit 0 if the export can NAME, 2 if not, 1 on error. NAME is one of "
          "connect, read, write, cache, df, fast-zero, flush, fua, multi-conn, trim, zero, "
          "structured-reply, block-status, extended-headers");
ABSL_FLAG(std::string, is, "",
          "Like --can: read-only, rotational or tls (exit 0 if so, 2 if not, 1 on error)");
ABSL_FLAG(std::string, map, "",
          "Print the extents of this meta context as nbdinfo does (offset, length, type, "
          "description); a bare --map means --map=base:allocation");
ABSL_FLAG(bool, totals, false, "With --map: bytes and percentage of the export per type");

namespace {

// One transmission flag as the text output names it.
struct FlagRow {
  const char* text_name;
  uint16_t bit;
};

constexpr FlagRow kFlagRows[] = {
    {"read-only", nbd::kFlagReadOnly},
    {"flush", nbd::kFlagSendFlush},
    {"fua", nbd::kFlagSendFua},
    {"trim", nbd::kFlagSendTrim},
    {"zero", nbd::kFlagSendWriteZeroes},
    {"fast-zero", nbd::kFlagSendFastZero},
    {"cache", nbd::kFlagSendCache},
    {"df", nbd::kFlagSendDf},
    {"multi-conn", nbd::kFlagCanMultiConn},
    {"rotational", nbd::kFlagRotational},
    {"resize", nbd::kFlagSendResize},
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

int Fail(const absl::Status& status) {
  std::string message(status.message());
  // The contract is one line on stderr: fold any newline a server put into its message.
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "nbd-info: %s\n", message.c_str());
  return 1;
}

void PrintJson(const nlohmann::ordered_json& document) {
  std::printf("%s\n", document.dump(2).c_str());
}

// Text: one export per line, its name ("" for the default export, which has an empty name),
// then a tab and its description when it has one. JSON: nbdinfo's document, with every
// export described as `nbd-info --json` describes one (an export that cannot be queried is
// reported on stderr and left out, and the exit status is then 1).
int ListExports(const nbdring::ClientOptions& options, bool json) {
  absl::StatusOr<std::vector<nbd::ExportListing>> exports = nbdring::ListExports(options);
  if (!exports.ok()) return Fail(exports.status());
  if (!json) {
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
  absl::StatusOr<nbd::NbdUri> address = nbd::ParseNbdUri(options.uri);
  if (!address.ok()) return Fail(address.status());
  int status = 0;
  nbd::ExportInfo protocol;
  nlohmann::ordered_json described = nlohmann::ordered_json::array();
  for (const nbd::ExportListing& listing : *exports) {
    nbdring::ClientOptions one = options;
    one.uri.clear();
    one.address = *address;
    one.address.export_name = listing.name;
    absl::StatusOr<nbdring::ExportQuery> query = nbdring::QueryExport(one);
    if (!query.ok()) {
      status = Fail(absl::Status(query.status().code(),
                                 absl::StrCat("\"", listing.name, "\": ", query.status().message())));
      continue;
    }
    protocol = query->info;
    described.push_back(
        nbdinfo::ExportJson(*query, one.address.ToString(), listing.description));
  }
  PrintJson(nbdinfo::InfoDocument(protocol, std::move(described)));
  return status;
}

int PrintSize(const nbdring::ClientOptions& options) {
  absl::StatusOr<nbdring::ExportQuery> query = nbdring::QueryExport(options);
  if (!query.ok()) return Fail(query.status());
  std::printf("%llu\n", static_cast<unsigned long long>(query->info.size));
  return 0;
}

// --can/--is: nothing on stdout; 0 for yes, 2 for no, 1 (with a message) for an error.
int AnswerFlagQuery(nbdring::ClientOptions options, const nbdinfo::FlagQuery& question) {
  if (question.offer_extended_headers) options.extended_headers = true;
  absl::StatusOr<nbdring::ExportQuery> query = nbdring::QueryExport(options);
  if (!query.ok()) return Fail(query.status());
  return question.answer(*query) ? 0 : 2;
}

int PrintMap(nbdring::ClientOptions options, const std::string& context, bool totals,
             bool json) {
  options.meta_contexts = {context};
  absl::StatusOr<std::unique_ptr<nbdring::Client>> client = nbdring::Client::Connect(options);
  if (!client.ok()) return Fail(client.status());
  absl::StatusOr<std::vector<nbdinfo::MapRun>> runs = nbdinfo::CollectMap(**client, context);
  const uint64_t size = (*client)->size();
  absl::Status closed = (*client)->Close();
  if (!runs.ok()) return Fail(runs.status());
  if (!closed.ok()) return Fail(closed);
  std::string text = totals ? nbdinfo::FormatMapTotals(context, *runs, size, json)
                            : nbdinfo::FormatMap(context, *runs, json);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

int DescribeExport(const nbdring::ClientOptions& options, bool json) {
  absl::StatusOr<nbdring::ExportQuery> query = nbdring::QueryExport(options);
  if (!query.ok()) return Fail(query.status());
  const nbd::ExportInfo& info = query->info;
  const nbd::BlockSizeConstraints& block_size = info.block_size;

  if (json) {
    nlohmann::ordered_json exports = nlohmann::ordered_json::array();
    exports.push_back(nbdinfo::ExportJson(*query, options.uri));
    PrintJson(nbdinfo::InfoDocument(info, std::move(exports)));
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

// The one mode the command line asks for, or an error naming the clash.
enum class Mode { kDescribe, kList, kSize, kFlagQuery, kMap };

int UsageFailure(int exit_code, const std::string& message) {
  std::fprintf(stderr, "nbd-info: %s\n", message.c_str());
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<std::vector<std::string>> meta_contexts =
      nbdinfo::PrepareArguments(&argc, argv);
  if (!meta_contexts.ok()) {
    // FailedPrecondition marks the errors nbdinfo exits 1 for (an empty --can/--is name).
    return UsageFailure(
        absl::IsFailedPrecondition(meta_contexts.status()) ? 1 : nbdtools::kExitUsage,
        std::string(meta_contexts.status().message()));
  }
  const std::vector<std::string> positional = nbdtools::ParseToolCommandLine(
      argc, argv,
      {"nbd-info",
       "shows an NBD export's size, flags, block sizes and meta contexts; the modes and\n"
       "their exit codes are nbdinfo's (libnbd 1.14).\n"
       "usage: nbd-info [--json] [--meta-context=NAME]... URI\n"
       "       nbd-info --size URI\n"
       "       nbd-info --can NAME URI     exit 0 if true, 2 if false, 1 on error\n"
       "       nbd-info --is read-only|rotational|tls URI\n"
       "       nbd-info --map[=CONTEXT] [--totals] [--json] URI\n"
       "       nbd-info -L|--list [--json] URI",
       "tools/info/"});
  if (!meta_contexts->empty()) absl::SetFlag(&FLAGS_meta_context, *meta_contexts);

  const std::string can = absl::GetFlag(FLAGS_can);
  const std::string is = absl::GetFlag(FLAGS_is);
  const std::string map = absl::GetFlag(FLAGS_map);
  const bool json = absl::GetFlag(FLAGS_json);
  const bool totals = absl::GetFlag(FLAGS_totals);
  // nbdinfo exits 1 for every usage error; nbdring's tools exit 2, which --can/--is need for
  // "false", so there these exit 1 as nbdinfo's do.
  const bool flag_query = !can.empty() || !is.empty();
  const int usage_exit = flag_query ? 1 : nbdtools::kExitUsage;

  std::vector<Mode> modes;
  if (absl::GetFlag(FLAGS_list)) modes.push_back(Mode::kList);
  if (absl::GetFlag(FLAGS_size)) modes.push_back(Mode::kSize);
  if (!can.empty()) modes.push_back(Mode::kFlagQuery);
  if (!is.empty()) modes.push_back(Mode::kFlagQuery);
  if (!map.empty()) modes.push_back(Mode::kMap);
  if (modes.size() > 1) {
    return UsageFailure(1, "you cannot use --list, --map, --size, --can and --is together");
  }
  const Mode mode = modes.empty() ? Mode::kDescribe : modes[0];
  if (totals && mode != Mode::kMap) {
    return UsageFailure(1, "you must use --totals only with --map option");
  }
  const nbdinfo::FlagQuery* question = nullptr;
  if (flag_query) {
    const std::string& name = can.empty() ? is : can;
    question = nbdinfo::FindFlagQuery(name);
    if (question == nullptr) {
      return UsageFailure(1, absl::StrCat("unknown --can or --is option: ", name, " (known: ",
                                          nbdinfo::FlagQueryNames(), ")"));
    }
  }
  if (positional.size() != 1) {
    return UsageFailure(usage_exit,
                        absl::StrFormat("expected exactly one URI argument, got %zu (see --help)",
                                        positional.size()));
  }

  nbdring::ClientOptions options;
  options.uri = positional[0];
  options.meta_contexts = absl::GetFlag(FLAGS_meta_context);
  switch (mode) {
    case Mode::kList:
      return ListExports(options, json);
    case Mode::kSize:
      return PrintSize(options);
    case Mode::kFlagQuery:
      return AnswerFlagQuery(options, *question);
    case Mode::kMap:
      return PrintMap(options, map, totals, json);
    case Mode::kDescribe:
      break;
  }
  return DescribeExport(options, json);
}
