// tools/copy/copy_plan.h — the order in which a copy visits its source, learned as it goes.
//
// A CopyPlan covers [0, size) of a source. It is told what the source holds window by window
// (Describe: ranges of data or of zeroes, in order, as many bytes as the source cared to
// describe) and hands out chunks in offset order (Next) as soon as they are described, so a
// copy can start long before a multi-terabyte disk has been mapped and never holds more of the
// map than it was told and has not yet handed out.
//
// Every chunk's offset and length is a multiple of `alignment` (the larger of the source's and
// the destination's NBD minimum block size). Zero and unchanged ranges shrink inwards to
// aligned boundaries; the unaligned bytes at their edges are copied as data, which reads them
// as what they are. The described bytes past the last aligned boundary wait for the next Describe, so a
// window that ends mid-block still yields only aligned chunks.
//
// Not thread-safe: the copier guards it with its plan mutex.
#ifndef NBDRING_TOOLS_COPY_COPY_PLAN_H_
#define NBDRING_TOOLS_COPY_COPY_PLAN_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace nbdcopy {

// A run of bytes that holds data, is known to read as zeroes, or (incremental copies) is
// unchanged since the destination was copied and need not be visited at all.
struct Range {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool zero = false;
  // Not dirty in the source's dirty bitmap: the destination already holds these bytes. Never
  // together with `zero`.
  bool unchanged = false;

  bool operator==(const Range&) const = default;
};

// Appends `range` to `ranges` (a vector or deque of Range), merging it into the last one when
// the two touch and agree on `zero` and `unchanged`. Empty ranges are dropped.
template <typename Ranges>
void AppendRange(Ranges* ranges, Range range) {
  if (range.length == 0) return;
  if (!ranges->empty()) {
    Range& last = ranges->back();
    if (last.zero == range.zero && last.unchanged == range.unchanged &&
        last.offset + last.length == range.offset) {
      last.length += range.length;
      return;
    }
  }
  ranges->push_back(range);
}

class CopyPlan {
 public:
  // Preconditions (the copier checks them, with messages naming the endpoints): `alignment`
  // is a power of two, and `size`, `data_chunk_limit` and `zero_chunk_limit` are multiples
  // of it (`zero_chunk_limit` may be UINT64_MAX: one chunk per zero range).
  CopyPlan(uint64_t size, uint64_t alignment, uint64_t data_chunk_limit,
           uint64_t zero_chunk_limit);

  // Describes the source from described_end() on. `ranges` must be in order and contiguous,
  // start at described_end() and describe at least one byte; what lies past the end of the
  // source is ignored.
  absl::Status Describe(absl::Span<const Range> ranges);

  // Where the next Describe must start; size() once the whole source is described.
  uint64_t described_end() const { return described_end_; }
  bool fully_described() const { return described_end_ == size_; }
  uint64_t size() const { return size_; }
  // Bytes described, aligned and not yet handed out by Next().
  uint64_t ready_bytes() const { return ready_bytes_; }

  // The next chunk in offset order: data up to `data_chunk_limit` bytes, zeroes up to
  // `zero_chunk_limit`, an unchanged range whole. Empty when every ready byte has been handed out (which means the copy
  // is done when fully_described(), and that it waits for Describe otherwise).
  std::optional<Range> Next();

 private:
  void AppendAligned(Range range);

  uint64_t size_;
  uint64_t alignment_;
  uint64_t data_chunk_limit_;
  uint64_t zero_chunk_limit_;
  uint64_t described_end_ = 0;
  // Described bytes past the last aligned boundary (fewer than `alignment_` of them).
  std::vector<Range> unaligned_tail_;
  // Chunkable ranges with aligned boundaries; chunks are cut from the front.
  std::deque<Range> ready_;
  uint64_t position_in_front_ = 0;
  uint64_t ready_bytes_ = 0;
};

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_COPY_PLAN_H_
