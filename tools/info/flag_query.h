// tools/info/flag_query.h — the yes/no questions of `nbd-info --can NAME` and `--is NAME`.
//
// The names and their answers are nbdinfo's (libnbd 1.14): one table serves both flags, so
// `--is trim` works as `--can trim` does, as in nbdinfo. nbd-info adds two names nbdinfo 1.14
// does not know: block-status (the server agreed to a meta context, so NBD_CMD_BLOCK_STATUS
// may be sent) and extended-headers (the server acknowledged NBD_OPT_EXTENDED_HEADERS).
#ifndef NBDRING_TOOLS_INFO_FLAG_QUERY_H_
#define NBDRING_TOOLS_INFO_FLAG_QUERY_H_

#include <string>

#include "absl/strings/string_view.h"
#include "nbdring/client.h"

namespace nbdinfo {

struct FlagQuery {
  const char* name;  // "multi-conn"
  // The answer, from what negotiation learned. Connecting at all is the test of "connect".
  bool (*answer)(const nbdring::ExportQuery& query);
  // Whether the question needs NBD_OPT_EXTENDED_HEADERS to be offered while negotiating.
  bool offer_extended_headers = false;
};

// The query named `name`, or nullptr when there is none.
const FlagQuery* FindFlagQuery(absl::string_view name);
// Every name, comma-separated, for error messages and --help.
std::string FlagQueryNames();

}  // namespace nbdinfo

#endif  // NBDRING_TOOLS_INFO_FLAG_QUERY_H_
