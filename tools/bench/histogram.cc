#include "tools/bench/histogram.h"

#include <algorithm>
#include <cmath>

namespace nbdbench {

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (int i = 0; i < kBucketCount; ++i) counts_[i] += other.counts_[i];
  count_ += other.count_;
  sum_ += other.sum_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
}

uint64_t LatencyHistogram::BucketLow(int index) {
  const uint64_t i = static_cast<uint64_t>(index);
  if (i < kSubBuckets) return i;
  const uint64_t shift = (i - kSubBuckets) / kSubBuckets;
  const uint64_t mantissa = (i - kSubBuckets) % kSubBuckets;
  return (kSubBuckets + mantissa) << shift;
}

uint64_t LatencyHistogram::BucketHigh(int index) {
  const uint64_t i = static_cast<uint64_t>(index);
  if (i < kSubBuckets) return i;
  const uint64_t shift = (i - kSubBuckets) / kSubBuckets;
  // Written as low + (width - 1) so the last bucket does not overflow.
  return BucketLow(index) + ((uint64_t{1} << shift) - 1);
}

uint64_t LatencyHistogram::Percentile(double percentile) const {
  if (count_ == 0) return 0;
  // The rank of the wanted value, 1-based: the ceiling, so p50 of {1, 2} is 1 as with a
  // sorted array's nearest-rank method.
  const double wanted = std::ceil(percentile / 100.0 * static_cast<double>(count_));
  const uint64_t rank = static_cast<uint64_t>(std::clamp(wanted, 1.0, static_cast<double>(count_)));
  if (rank == count_) return max_;  // the largest value is known exactly
  uint64_t seen = 0;
  for (int i = 0; i < kBucketCount; ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      const uint64_t low = BucketLow(i);
      const uint64_t midpoint = low + (BucketHigh(i) - low) / 2;
      return std::clamp(midpoint, min(), max_);
    }
  }
  return max_;
}

}  // namespace nbdbench
