#include "tools/info/arguments.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace nbdinfo {

absl::StatusOr<std::vector<std::string>> PrepareArguments(int* argc, char** argv) {
  std::vector<std::string> values;
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    absl::string_view argument = argv[i];
    if (argument == "--") {
      // Everything after "--" is positional: keep it untouched.
      while (i < *argc) argv[kept++] = argv[i++];
      break;
    }
    // An empty value would silently mean "not given" to these flags.
    if (argument == "--map=") return absl::InvalidArgumentError("--map= needs a context name");
    for (absl::string_view spelling : {"--can", "--is"}) {
      if (argument == absl::StrCat(spelling, "=") ||
          (argument == spelling && i + 1 < *argc && argv[i + 1][0] == '\0')) {
        return absl::FailedPreconditionError(
            absl::StrCat("unknown --can or --is option: '' (", spelling, " needs a name)"));
      }
    }
    if (argument == "--map") {
      argv[kept++] = const_cast<char*>("--map=base:allocation");
      continue;
    }
    if (argument == "-L") {
      argv[kept++] = const_cast<char*>("--list");
      continue;
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

}  // namespace nbdinfo
