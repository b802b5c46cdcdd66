// tools/info/arguments.h — nbd-info's spellings that Abseil flags cannot take, handled before
// the shared parser (tools/common/command_line.h) sees argv:
//
//   --meta-context=A,B / --meta-context A   repeatable, and spelled with a '-'; taken out of
//                                           argv and returned in order
//   --map                                   nbdinfo's optional value: becomes
//                                           --map=base:allocation ("--map X" leaves X a URI)
//   -L                                      becomes --list
//
// Errors: InvalidArgument for a missing or empty value (exit 2 like other usage errors);
// FailedPrecondition for an empty --can/--is name, which nbdinfo reports, with exit 1, as an
// unknown name.
#ifndef NBDRING_TOOLS_INFO_ARGUMENTS_H_
#define NBDRING_TOOLS_INFO_ARGUMENTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace nbdinfo {

// Rewrites argv in place (argv[*argc] stays nullptr); returns the --meta-context values.
absl::StatusOr<std::vector<std::string>> PrepareArguments(int* argc, char** argv);

}  // namespace nbdinfo

#endif  // NBDRING_TOOLS_INFO_ARGUMENTS_H_
