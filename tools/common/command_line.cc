#include "tools/common/command_line.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace nbdtools {
namespace {

[[noreturn]] void UsageError(const ToolCommandLine& tool, const std::string& message) {
  std::fprintf(stderr, "%s: %s (see --help)\n", tool.name, message.c_str());
  std::exit(kExitUsage);
}

bool IsToolFlag(const absl::CommandLineFlag& flag, const ToolCommandLine& tool) {
  return absl::StrContains(flag.Filename(), tool.flags_directory);
}

absl::CommandLineFlag* FindToolFlag(absl::string_view name, const ToolCommandLine& tool) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && IsToolFlag(*flag, tool) ? flag : nullptr;
}

[[noreturn]] void PrintHelp(const ToolCommandLine& tool) {
  std::printf("%s: %s\n\nFlags:\n", tool.name, tool.usage);
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsToolFlag(*flag, tool)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](absl::CommandLineFlag* a, absl::CommandLineFlag* b) {
    return a->Name() < b->Name();
  });
  for (const absl::CommandLineFlag* flag : flags) {
    std::printf("  --%s\n      %s (default: %s)\n", std::string(flag->Name()).c_str(), flag->Help().c_str(),
                flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue().c_str());
  }
  std::printf("  --help, --version\n");
  std::exit(0);
}

}  // namespace

std::vector<std::string> ParseToolCommandLine(int argc, char** argv,
                                              const ToolCommandLine& tool) {
  std::vector<std::string> positional;
  bool flags_ended = false;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (flags_ended || argument == "-" || argument.empty() || argument[0] != '-') {
      positional.push_back(argument);
      continue;
    }
    if (argument == "--") {
      flags_ended = true;
      continue;
    }
    if (argument == "-h" || argument == "--help" || argument == "--helpfull" ||
        argument == "--helpshort") {
      PrintHelp(tool);
    }
    if (argument == "--version") {
      std::printf("%s (nbdring) %s\n", tool.name, kNbdringVersion);
      std::exit(0);
    }
    const absl::string_view text =
        absl::string_view(argument).substr(absl::StartsWith(argument, "--") ? 2 : 1);
    const size_t equals = text.find('=');
    const absl::string_view name = text.substr(0, equals);
    absl::CommandLineFlag* flag = FindToolFlag(name, tool);
    std::string value;
    if (flag == nullptr && absl::StartsWith(name, "no") && equals == absl::string_view::npos) {
      flag = FindToolFlag(name.substr(2), tool);
      if (flag != nullptr && !flag->IsOfType<bool>()) flag = nullptr;
      value = "false";
    } else if (flag != nullptr && equals != absl::string_view::npos) {
      value = std::string(text.substr(equals + 1));
    } else if (flag != nullptr && flag->IsOfType<bool>()) {
      value = "true";
    } else if (flag != nullptr) {
      if (i + 1 >= argc) UsageError(tool, absl::StrCat("flag --", name, " needs a value"));
      value = argv[++i];
    }
    if (flag == nullptr) UsageError(tool, absl::StrCat("unknown flag \"", argument, "\""));
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      UsageError(tool, absl::StrCat("--", name, "=", value, ": ", error));
    }
  }
  return positional;
}

}  // namespace nbdtools
