#include "tools/bench/workload.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace nbdbench {
namespace {

struct ModeName {
  ReadWrite mode;
  const char* name;
};
constexpr ModeName kModeNames[] = {
    {ReadWrite::kRandRead, "randread"}, {ReadWrite::kRandWrite, "randwrite"},
    {ReadWrite::kRead, "read"},         {ReadWrite::kWrite, "write"},
    {ReadWrite::kRandRw, "randrw"},
};

// Distinguishes the pattern from a plain counter, so a server that returns some other
// offset's data or an index instead of data is caught.
constexpr uint64_t kPatternSeed = 0x6e62647269e67ULL;

uint64_t PatternWord(uint64_t word_index) { return SplitMix64::Mix(word_index ^ kPatternSeed); }

}  // namespace

absl::StatusOr<ReadWrite> ParseReadWrite(absl::string_view text) {
  for (const ModeName& entry : kModeNames) {
    if (text == entry.name) return entry.mode;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--rw must be one of randread, randwrite, read, write, randrw; got \"", text, "\""));
}

const char* ReadWriteName(ReadWrite mode) {
  for (const ModeName& entry : kModeNames) {
    if (entry.mode == mode) return entry.name;
  }
  return "?";
}

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[digits]))) {
    ++digits;
  }
  if (digits == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("size \"", text, "\" must start with a number (e.g. 4096, 4k, 1m, 2g)"));
  }
  uint64_t number = 0;
  if (!absl::SimpleAtoi(text.substr(0, digits), &number)) {
    return absl::InvalidArgumentError(absl::StrCat("size \"", text, "\" is too large"));
  }
  // Binary units, as fio reads them: "4k", "4KB" and "4KiB" are all 4096 bytes.
  const std::string unit = absl::AsciiStrToLower(text.substr(digits));
  int shift = -1;
  for (const auto& [letter, unit_shift] :
       {std::pair<char, int>{'k', 10}, {'m', 20}, {'g', 30}, {'t', 40}}) {
    const std::string name(1, letter);
    if (unit == name || unit == name + "b" || unit == name + "ib") shift = unit_shift;
  }
  if (unit.empty() || unit == "b") shift = 0;
  if (shift < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size \"", text, "\" has an unknown suffix; use none (bytes) or one of k, m, g, t"));
  }
  constexpr uint64_t kLimit = uint64_t{1} << 63;
  if (number > ((kLimit - 1) >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat("size \"", text, "\" is too large"));
  }
  return number << shift;
}

absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text) {
  std::vector<int> cpus;
  if (text.empty()) {
    return absl::InvalidArgumentError("--cpus is empty; give a list such as 1 or 0,1 or 0-3");
  }
  constexpr int kMaxCpu = 1023;  // CPU_SETSIZE in glibc
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    const std::pair<absl::string_view, absl::string_view> bounds =
        absl::StrSplit(part, absl::MaxSplits('-', 1));
    int first = 0;
    int last = 0;
    const bool is_range = !bounds.second.empty() || absl::EndsWith(part, "-");
    if (!absl::SimpleAtoi(bounds.first, &first) ||
        (is_range && !absl::SimpleAtoi(bounds.second, &last)) || first < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cpus: \"", part, "\" is not a CPU number or range (in \"", text, "\")"));
    }
    if (!is_range) last = first;
    if (last < first || last > kMaxCpu) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cpus: range \"", part, "\" must go upwards and stay within 0-", kMaxCpu));
    }
    for (int cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

absl::StatusOr<BlockRange> BlockRange::Create(uint64_t region_offset, uint64_t region_length,
                                              uint64_t block_size) {
  if (block_size == 0) return absl::InvalidArgumentError("block size must not be zero");
  if (block_size > region_length) {
    return absl::InvalidArgumentError(absl::StrCat("block size ", block_size,
                                                   " is larger than the region (", region_length,
                                                   " bytes at offset ", region_offset, ")"));
  }
  return BlockRange(region_offset, block_size, region_length / block_size);
}

uint8_t PatternByte(uint64_t offset) {
  const uint64_t word = PatternWord(offset / 8);
  uint8_t bytes[8];
  std::memcpy(bytes, &word, sizeof(bytes));
  return bytes[offset % 8];
}

void FillPattern(uint64_t offset, uint8_t* data, size_t length) {
  size_t done = 0;
  while (done < length && (offset + done) % 8 != 0) {
    data[done] = PatternByte(offset + done);
    ++done;
  }
  for (; length - done >= 8; done += 8) {
    const uint64_t word = PatternWord((offset + done) / 8);
    std::memcpy(data + done, &word, 8);
  }
  for (; done < length; ++done) data[done] = PatternByte(offset + done);
}

std::optional<uint64_t> FindPatternMismatch(uint64_t offset, const uint8_t* data, size_t length) {
  size_t done = 0;
  while (done < length && (offset + done) % 8 != 0) {
    if (data[done] != PatternByte(offset + done)) return offset + done;
    ++done;
  }
  for (; length - done >= 8; done += 8) {
    const uint64_t expected = PatternWord((offset + done) / 8);
    if (std::memcmp(data + done, &expected, 8) != 0) break;  // the byte loop below finds it
  }
  for (; done < length; ++done) {
    if (data[done] != PatternByte(offset + done)) return offset + done;
  }
  return std::nullopt;
}

absl::Status CheckPatternData(uint64_t offset, const uint8_t* data, size_t length) {
  const std::optional<uint64_t> mismatch = FindPatternMismatch(offset, data, length);
  if (!mismatch) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "VERIFY FAILED: byte at offset %d (0x%x) reads 0x%02x, expected 0x%02x "
      "(in the %d-byte read at offset %d)",
      *mismatch, *mismatch, data[*mismatch - offset], PatternByte(*mismatch), length, offset));
}

}  // namespace nbdbench
