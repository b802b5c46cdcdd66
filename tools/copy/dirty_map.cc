#include "tools/copy/dirty_map.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace nbdcopy {
namespace {

// Walks a list of extents from a start offset, one boundary at a time.
class ExtentCursor {
 public:
  ExtentCursor(absl::Span<const nbdring::Extent> extents, uint64_t offset)
      : extents_(extents), extent_start_(offset) {
    SkipEmpty();
  }
  bool done() const { return index_ == extents_.size(); }
  uint64_t end() const { return extent_start_ + extents_[index_].length; }
  uint64_t flags() const { return extents_[index_].flags; }
  // Moves past the current extent when `position` reached its end.
  void AdvanceTo(uint64_t position) {
    if (done() || position < end()) return;
    extent_start_ = end();
    ++index_;
    SkipEmpty();
  }

 private:
  void SkipEmpty() {
    while (!done() && extents_[index_].length == 0) ++index_;
  }
  absl::Span<const nbdring::Extent> extents_;
  size_t index_ = 0;
  uint64_t extent_start_;
};

}  // namespace

std::string DirtyBitmapContext(absl::string_view bitmap_name) {
  return absl::StrCat("qemu:dirty-bitmap:", bitmap_name);
}

std::vector<Range> CombineDirtyExtents(
    uint64_t offset, uint64_t size, absl::Span<const nbdring::Extent> bitmap,
    std::optional<absl::Span<const nbdring::Extent>> allocation) {
  // Without base:allocation, one endless data extent stands in for it.
  const nbdring::Extent all_data[] = {nbdring::Extent{UINT64_MAX - offset, 0}};
  ExtentCursor dirty(bitmap, offset);
  ExtentCursor allocated(allocation.value_or(absl::MakeConstSpan(all_data)), offset);
  std::vector<Range> ranges;
  uint64_t position = offset;
  while (position < size && !dirty.done() && !allocated.done()) {
    const uint64_t end = std::min({dirty.end(), allocated.end(), size});
    Range range{position, end - position};
    if ((dirty.flags() & kDirtyBitmapDirtyFlag) == 0) {
      range.unchanged = true;
    } else {
      range.zero = (allocated.flags() & nbd::kStateZero) != 0;
    }
    AppendRange(&ranges, range);
    position = end;
    dirty.AdvanceTo(position);
    allocated.AdvanceTo(position);
  }
  return ranges;
}

}  // namespace nbdcopy
