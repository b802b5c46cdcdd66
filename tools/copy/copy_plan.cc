#include "tools/copy/copy_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace nbdcopy {

CopyPlan::CopyPlan(uint64_t size, uint64_t alignment, uint64_t data_chunk_limit,
                   uint64_t zero_chunk_limit)
    : size_(size),
      alignment_(alignment),
      data_chunk_limit_(data_chunk_limit),
      zero_chunk_limit_(zero_chunk_limit) {}

absl::Status CopyPlan::Describe(absl::Span<const Range> ranges) {
  const uint64_t start = described_end_;
  for (Range range : ranges) {
    if (described_end_ == size_) break;
    if (range.offset != described_end_) {
      return absl::FailedPreconditionError(
          absl::StrCat("the source map asked for offset ", start, " has a range at offset ",
                       range.offset, " where offset ", described_end_, " was expected"));
    }
    range.length = std::min(range.length, size_ - range.offset);
    AppendRange(&unaligned_tail_, range);
    described_end_ += range.length;
  }
  if (described_end_ == start && start != size_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the source map asked for offset ", start, " described no bytes"));
  }

  // Only what ends on an aligned boundary can be cut into aligned chunks; the end of the
  // source is aligned by precondition.
  const uint64_t aligned_end = described_end_ - described_end_ % alignment_;
  size_t consumed = 0;
  for (Range& range : unaligned_tail_) {
    if (range.offset >= aligned_end) break;
    const uint64_t end = std::min(range.offset + range.length, aligned_end);
    AppendAligned(Range{range.offset, end - range.offset, range.zero, range.unchanged});
    if (end < range.offset + range.length) {
      range.length -= end - range.offset;
      range.offset = end;
      break;
    }
    ++consumed;
  }
  unaligned_tail_.erase(unaligned_tail_.begin(),
                        unaligned_tail_.begin() + static_cast<ptrdiff_t>(consumed));
  return absl::OkStatus();
}

void CopyPlan::AppendAligned(Range range) {
  const uint64_t end = range.offset + range.length;
  if (range.zero || range.unchanged) {
    // Shrink to the aligned blocks the range covers whole; the edges are read as data.
    const uint64_t inner_start = (range.offset + alignment_ - 1) / alignment_ * alignment_;
    const uint64_t inner_end = end - end % alignment_;
    if (inner_start < inner_end) {
      AppendAligned(Range{range.offset, inner_start - range.offset, false});
      AppendRange(&ready_, Range{inner_start, inner_end - inner_start, range.zero,
                                 range.unchanged});
      ready_bytes_ += inner_end - inner_start;
      AppendAligned(Range{inner_end, end - inner_end, false});
      return;
    }
    range.zero = false;
    range.unchanged = false;
  }
  AppendRange(&ready_, range);
  ready_bytes_ += range.length;
}

std::optional<Range> CopyPlan::Next() {
  if (ready_.empty()) return std::nullopt;
  const Range& front = ready_.front();
  // Unchanged bytes are passed over, not sent: one chunk however long.
  const uint64_t limit =
      front.unchanged ? UINT64_MAX : (front.zero ? zero_chunk_limit_ : data_chunk_limit_);
  const uint64_t length = std::min(front.length - position_in_front_, limit);
  const Range chunk{front.offset + position_in_front_, length, front.zero, front.unchanged};
  position_in_front_ += length;
  ready_bytes_ -= length;
  if (position_in_front_ == front.length) {
    ready_.pop_front();
    position_in_front_ = 0;
  }
  return chunk;
}

}  // namespace nbdcopy
