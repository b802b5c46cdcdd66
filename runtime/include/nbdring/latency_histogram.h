// nbdring/latency_histogram.h — request latencies as a fixed-size, log-linear histogram.
//
// Buckets: everything under 1 µs in bucket 0; then every power of two of nanoseconds from
// 2^10 (1.02 µs) to 2^36 (68.7 s) split into 8 equal buckets (so a bucket is at most 12.5 %
// of its values wide); everything from 2^36 ns in the last bucket. 218 counters, 1.7 KiB;
// no allocation. A percentile is reported as the upper bound of the bucket it falls in, so it
// is at most 12.5 % above a latency that really occurred.
//
// Plain data: Client::stats() returns snapshots. Merge adds another histogram's counts.
#ifndef NBDRING_LATENCY_HISTOGRAM_H_
#define NBDRING_LATENCY_HISTOGRAM_H_

#include <array>
#include <cstdint>

namespace nbdring {

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 3;  // 8 buckets per power of two
  static constexpr int kMinExponent = 10;   // 2^10 ns
  static constexpr int kMaxExponent = 36;   // 2^36 ns
  static constexpr int kBucketCount = 1 + ((kMaxExponent - kMinExponent) << kSubBucketBits) + 1;

  static int BucketOf(uint64_t latency_ns) {
    if (latency_ns < (uint64_t{1} << kMinExponent)) return 0;
    if (latency_ns >= (uint64_t{1} << kMaxExponent)) return kBucketCount - 1;
    const int exponent = 63 - __builtin_clzll(latency_ns);
    const int sub = static_cast<int>((latency_ns >> (exponent - kSubBucketBits)) &
                                     ((1 << kSubBucketBits) - 1));
    return 1 + ((exponent - kMinExponent) << kSubBucketBits) + sub;
  }
  // The smallest latency (ns) above bucket `bucket`: its exclusive upper bound. The last
  // bucket has none (UINT64_MAX).
  static uint64_t BucketUpperBoundNs(int bucket) {
    if (bucket <= 0) return uint64_t{1} << kMinExponent;
    if (bucket >= kBucketCount - 1) return UINT64_MAX;
    const int index = bucket - 1;
    const int exponent = kMinExponent + (index >> kSubBucketBits);
    const uint64_t sub = static_cast<uint64_t>(index & ((1 << kSubBucketBits) - 1));
    return (uint64_t{1} << exponent) + ((sub + 1) << (exponent - kSubBucketBits));
  }

  void Add(int bucket, uint64_t count, uint64_t sum_ns) {
    counts_[static_cast<size_t>(bucket)] += count;
    count_ += count;
    sum_ns_ += sum_ns;
  }
  void Merge(const LatencyHistogram& other) {
    for (int i = 0; i < kBucketCount; ++i) counts_[static_cast<size_t>(i)] += other.counts_[i];
    count_ += other.count_;
    sum_ns_ += other.sum_ns_;
  }

  uint64_t count() const { return count_; }
  uint64_t sum_ns() const { return sum_ns_; }
  uint64_t bucket_count(int bucket) const { return counts_[static_cast<size_t>(bucket)]; }
  // The latency under which `fraction` (0..1] of the recorded ones fall: the upper bound of
  // that bucket, in ns. 0 when nothing was recorded.
  uint64_t PercentileNs(double fraction) const {
    if (count_ == 0) return 0;
    const double wanted = fraction * static_cast<double>(count_);
    uint64_t seen = 0;
    for (int i = 0; i < kBucketCount; ++i) {
      seen += counts_[static_cast<size_t>(i)];
      if (static_cast<double>(seen) >= wanted && seen > 0) return BucketUpperBoundNs(i);
    }
    return BucketUpperBoundNs(kBucketCount - 1);
  }

 private:
  std::array<uint64_t, kBucketCount> counts_{};
  uint64_t count_ = 0;
  uint64_t sum_ns_ = 0;
};

}  // namespace nbdring

#endif  // NBDRING_LATENCY_HISTOGRAM_H_
