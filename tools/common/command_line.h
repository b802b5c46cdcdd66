// tools/common/command_line.h — one command-line convention for every tool:
//   --help (or -h, --helpfull)  the usage, then every flag of the tool with its default; exit 0
//   --version                   "<tool> (nbdring) <version>"; exit 0
//   an unknown flag, a flag without its value, or a bad value: one line naming it; exit 2
// Flags are Abseil flags; --name=value, --name value, --bool, --nobool; "--" ends the flags.
#ifndef NBDRING_TOOLS_COMMON_COMMAND_LINE_H_
#define NBDRING_TOOLS_COMMON_COMMAND_LINE_H_

#include <string>
#include <vector>

namespace nbdtools {

inline constexpr char kNbdringVersion[] = "0.5.0-dev";
inline constexpr int kExitUsage = 2;

struct ToolCommandLine {
  const char* name;             // "nbd-copy"
  const char* usage;            // the first lines of --help
  const char* flags_directory;  // "tools/copy/": flags defined under it are the tool's
};

// Sets the tool's flags from `argv` and returns the positional arguments (without argv[0]).
// Exits with 0 after --help/--version and with kExitUsage after a usage error.
std::vector<std::string> ParseToolCommandLine(int argc, char** argv, const ToolCommandLine& tool);

}  // namespace nbdtools

#endif  // NBDRING_TOOLS_COMMON_COMMAND_LINE_H_
