// tools/bench/workload.h — what the benchmark asks of the server, independent of the engine.
//
// Parsing of the fio-style values (--rw, --bs and other sizes, --cpus), the offsets a workload
// visits (random blocks aligned to the block size within a region, or sequential per-stream
// walks), a fast allocation-free PRNG, and the deterministic data pattern that --verify and the
// prefill write: every byte is a function of its absolute offset on the export, so writes in
// any order and from any connection leave the same bytes, and any read can be checked alone.
#ifndef NBDRING_TOOLS_BENCH_WORKLOAD_H_
#define NBDRING_TOOLS_BENCH_WORKLOAD_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace nbdbench {

enum class ReadWrite { kRandRead, kRandWrite, kRead, kWrite, kRandRw };

// "randread", "randwrite", "read", "write" or "randrw", as fio spells them.
absl::StatusOr<ReadWrite> ParseReadWrite(absl::string_view text);
const char* ReadWriteName(ReadWrite mode);
inline bool IsRandom(ReadWrite mode) {
  return mode == ReadWrite::kRandRead || mode == ReadWrite::kRandWrite ||
         mode == ReadWrite::kRandRw;
}
inline bool ReadsData(ReadWrite mode) {
  return mode == ReadWrite::kRandRead || mode == ReadWrite::kRead || mode == ReadWrite::kRandRw;
}
inline bool WritesData(ReadWrite mode) {
  return mode == ReadWrite::kRandWrite || mode == ReadWrite::kWrite || mode == ReadWrite::kRandRw;
}

// A byte count: decimal digits with an optional binary suffix k/m/g/t (either case; "4k" is
// 4096), optionally followed by "b" or "ib" ("4KiB", "1MB"). The result must fit in 63 bits.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// A CPU list as taskset(1) takes it: "1", "0,1", "0-3,6". Sorted, without duplicates.
absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text);

// SplitMix64 (Steele, Lea, Flood 2014): one add and three multiply-xorshift steps per value;
// passes BigCrush, which is far more than picking block numbers needs.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed = 0) : state_(seed) {}
  uint64_t Next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return Mix(state_);
  }
  // A value in [0, bound) by multiply-shift (Lemire): no division, bias below 2^-64 * bound.
  uint64_t Below(uint64_t bound) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * bound) >> 64);
  }
  static uint64_t Mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

// The region of the export a workload uses, cut into whole blocks of `block_size` bytes
// starting at `region_offset` (offsets are aligned to the block size relative to the region's
// start; a tail shorter than a block is never touched).
class BlockRange {
 public:
  // Fails when the block size is zero or larger than the region.
  static absl::StatusOr<BlockRange> Create(uint64_t region_offset, uint64_t region_length,
                                           uint64_t block_size);

  uint64_t block_size() const { return block_size_; }
  uint64_t block_count() const { return block_count_; }
  uint64_t OffsetOfBlock(uint64_t block) const { return region_offset_ + block * block_size_; }
  uint64_t RandomOffset(SplitMix64& random) const {
    return OffsetOfBlock(random.Below(block_count_));
  }
  // Sequential workloads: stream `stream` of `streams` starts at its share of the region and
  // its `step`-th I/O (counting from 0) goes `step` blocks further, wrapping at the region end.
  uint64_t StreamOffset(int stream, int streams, uint64_t step) const {
    const uint64_t first =
        block_count_ / static_cast<uint64_t>(streams) * static_cast<uint64_t>(stream);
    return OffsetOfBlock((first + step) % block_count_);
  }

 private:
  BlockRange(uint64_t region_offset, uint64_t block_size, uint64_t block_count)
      : region_offset_(region_offset), block_size_(block_size), block_count_(block_count) {}
  uint64_t region_offset_;
  uint64_t block_size_;
  uint64_t block_count_;
};

// The byte the pattern puts at absolute export offset `offset`.
uint8_t PatternByte(uint64_t offset);
// Writes the pattern for export bytes [offset, offset + length) into `data`.
void FillPattern(uint64_t offset, uint8_t* data, size_t length);
// The absolute export offset of the first byte of `data` (which holds export bytes starting at
// `offset`) that differs from the pattern, or nullopt when all match.
std::optional<uint64_t> FindPatternMismatch(uint64_t offset, const uint8_t* data, size_t length);
// OK when `data` (export bytes from `offset`) holds the pattern; otherwise a DataLossError
// naming the first differing offset, the byte read and the byte expected.
absl::Status CheckPatternData(uint64_t offset, const uint8_t* data, size_t length);

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_WORKLOAD_H_
