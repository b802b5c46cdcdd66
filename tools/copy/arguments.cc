#include "tools/copy/arguments.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace nbdcopy {
namespace {

// nbdcopy's short options that take a value, and the long flag each one is.
const char* LongNameOfShortOption(char letter) {
  switch (letter) {
    case 'C': return "connections";
    case 'R': return "requests";
    case 'S': return "sparse";
    case 'T': return "threads";
    default: return nullptr;
  }
}

bool IsNumber(absl::string_view text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

absl::Status RewriteNbdcopyArguments(int* argc, char** argv, std::deque<std::string>* storage) {
  int kept = 1;
  auto keep = [&](std::string rewritten) {
    storage->push_back(std::move(rewritten));
    argv[kept++] = storage->back().data();
  };
  for (int i = 1; i < *argc; ++i) {
    const absl::string_view argument = argv[i];
    if (argument == "--") {
      while (i < *argc) argv[kept++] = argv[i++];
      break;
    }
    if (argument == "-p") {
      keep("--progress");
    } else if (argument == "-v") {
      keep("--verbose");
    } else if (argument == "-V") {
      keep("--version");
    } else if (argument.size() >= 2 && argument[0] == '-' && argument[1] != '-' &&
               LongNameOfShortOption(argument[1]) != nullptr) {
      const char* name = LongNameOfShortOption(argument[1]);
      absl::string_view value = argument.substr(2);
      if (value.empty()) {
        if (i + 1 >= *argc) {
          return absl::InvalidArgumentError(
              absl::StrCat("option ", argument, " (--", name, ") needs a value"));
        }
        value = argv[++i];
      }
      keep(absl::StrCat("--", name, "=", value));
    } else if (absl::StartsWith(argument, "--progress=")) {
      const absl::string_view fd = argument.substr(sizeof("--progress=") - 1);
      if (!IsNumber(fd)) {
        return absl::InvalidArgumentError(absl::StrCat(
            argument, ": --progress=FD needs a file descriptor number, got \"", fd, "\""));
      }
      keep(absl::StrCat("--progress_fd=", fd));
    } else if (argument == "--target-is-zero" || argument == "--target_is_zero") {
      keep("--destination_is_zero");
    } else if (argument.size() > 2 && absl::StartsWith(argument, "--")) {
      std::string rewritten(argument);
      const size_t name_end = std::min(rewritten.find('='), rewritten.size());
      for (size_t j = 2; j < name_end; ++j) {
        if (rewritten[j] == '-') rewritten[j] = '_';
      }
      keep(std::move(rewritten));
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  argv[kept] = nullptr;
  return absl::OkStatus();
}

}  // namespace nbdcopy
