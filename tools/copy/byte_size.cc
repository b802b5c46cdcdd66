#include "tools/copy/byte_size.h"

#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace nbdcopy {

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  absl::string_view rest = absl::StripAsciiWhitespace(text);
  // Accept "256k", "256K", "256KiB", "256kb": the unit is the first letter.
  size_t digits = 0;
  while (digits < rest.size() && absl::ascii_isdigit(static_cast<unsigned char>(rest[digits]))) {
    ++digits;
  }
  absl::string_view number = rest.substr(0, digits);
  absl::string_view unit = rest.substr(digits);
  uint64_t value = 0;
  if (number.empty() || !absl::SimpleAtoi(number, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a size (expected e.g. 4096, 256k, 1m)"));
  }
  unsigned shift = 0;
  if (!unit.empty()) {
    switch (absl::ascii_tolower(static_cast<unsigned char>(unit[0]))) {
      case 'k': shift = 10; break;
      case 'm': shift = 20; break;
      case 'g': shift = 30; break;
      case 't': shift = 40; break;
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "\"", text, "\" has an unknown unit \"", unit, "\" (expected k, m, g or t)"));
    }
    absl::string_view suffix = unit.substr(1);
    if (!suffix.empty() && suffix != "b" && suffix != "B" && suffix != "iB") {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", text, "\" has an unknown unit \"", unit, "\" (expected k, m, g or t)"));
    }
  }
  if (shift != 0 && value > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return absl::OutOfRangeError(absl::StrCat("\"", text, "\" does not fit in 64 bits"));
  }
  return value << shift;
}

}  // namespace nbdcopy
