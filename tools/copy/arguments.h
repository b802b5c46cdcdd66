// tools/copy/arguments.h — nbdcopy's spellings that Abseil flags cannot take, rewritten before
// the shared parser (tools/common/command_line.h) sees argv:
//
//   --request-size=1m, --target-is-zero ...  dashes in long names become underscores;
//                                            --target-is-zero is --destination_is_zero
//   -C N, -R N, -S N, -T N (or -C4 ...)      --connections, --requests, --sparse, --threads
//   -p                                       --progress (the live line on stderr)
//   --progress=FD                            --progress_fd=FD (machine-readable "N/100" lines)
//   -v, -V                                   --verbose, --version
//
// Everything after "--" is positional and left alone. Errors (InvalidArgument, a usage error)
// name the argument: a short option without its value, a --progress= that is not a number.
#ifndef NBDRING_TOOLS_COPY_ARGUMENTS_H_
#define NBDRING_TOOLS_COPY_ARGUMENTS_H_

#include <deque>
#include <string>

#include "absl/status/status.h"

namespace nbdcopy {

// Rewrites argv in place (argv[*argc] stays nullptr). Rewritten strings live in `storage`, a
// deque so that they never move once argv points at them.
absl::Status RewriteNbdcopyArguments(int* argc, char** argv, std::deque<std::string>* storage);

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_ARGUMENTS_H_
