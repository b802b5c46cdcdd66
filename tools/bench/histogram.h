// tools/bench/histogram.h — a fixed-size, log-bucketed latency histogram.
//
// Values are nanoseconds. Values below 64 get a bucket each; above that every power of two is
// split into 64 equal buckets, so a bucket is at most 1/64 (1.6%) of its values wide and a
// reported percentile (the bucket's midpoint, clamped to the exact minimum and maximum seen)
// is within 0.8% of a value that really occurred. Memory is fixed (about 30 KiB); Record()
// never allocates and is a handful of instructions. Not thread-safe: the benchmark keeps one
// per thread and merges them when the run is over.
#ifndef NBDRING_TOOLS_BENCH_HISTOGRAM_H_
#define NBDRING_TOOLS_BENCH_HISTOGRAM_H_

#include <array>
#include <cstddef>
#include <cstdint>

namespace nbdbench {

class LatencyHistogram {
 public:
  // Buckets per power of two, as a power of two: 2^6 = 64.
  static constexpr int kSubBucketBits = 6;
  static constexpr uint64_t kSubBuckets = uint64_t{1} << kSubBucketBits;
  // Exact buckets [0, 64), then 64 buckets for each exponent 6..63.
  static constexpr int kBucketCount =
      static_cast<int>(kSubBuckets + (64 - kSubBucketBits) * kSubBuckets);

  void Record(uint64_t value) {
    ++counts_[BucketIndex(value)];
    ++count_;
    sum_ += value;
    if (value < min_) min_ = value;
    if (value > max_) max_ = value;
  }

  // Adds every value recorded in `other` to this histogram.
  void Merge(const LatencyHistogram& other);

  uint64_t count() const { return count_; }
  uint64_t bucket_count(int index) const { return counts_[static_cast<size_t>(index)]; }
  uint64_t min() const { return count_ == 0 ? 0 : min_; }
  uint64_t max() const { return max_; }
  double mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / count_; }

  // The value at `percentile` (0 < percentile <= 100): the smallest recorded value such that
  // at least that share of the values are at most it, to within a bucket. 0 when empty.
  uint64_t Percentile(double percentile) const;

  static int BucketIndex(uint64_t value) {
    if (value < kSubBuckets) return static_cast<int>(value);
    const int exponent = 63 - __builtin_clzll(value);  // value >= 64, so exponent >= 6
    const int shift = exponent - kSubBucketBits;
    const uint64_t mantissa = (value >> shift) - kSubBuckets;  // in [0, 64)
    return static_cast<int>(kSubBuckets + static_cast<uint64_t>(shift) * kSubBuckets + mantissa);
  }
  // The smallest and largest value that land in bucket `index`.
  static uint64_t BucketLow(int index);
  static uint64_t BucketHigh(int index);

 private:
  std::array<uint64_t, kBucketCount> counts_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
};

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_HISTOGRAM_H_
