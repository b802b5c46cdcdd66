// Percentiles of nbd-bench's log-bucketed histogram against exact nearest-rank percentiles of
// known distributions, bucket geometry, and merging.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "tools/bench/histogram.h"

namespace nbdbench {
namespace {

// The nearest-rank percentile of `values`, the definition the histogram approximates.
uint64_t ExactPercentile(std::vector<uint64_t> values, double percentile) {
  std::sort(values.begin(), values.end());
  const double rank = std::ceil(percentile / 100.0 * static_cast<double>(values.size()));
  const size_t index = static_cast<size_t>(std::max(1.0, rank)) - 1;
  return values[index];
}

// Within the histogram's promise: half a bucket, at most 1/128 of the value.
void ExpectClose(uint64_t actual, uint64_t expected, const char* what) {
  const double tolerance = static_cast<double>(expected) / 128.0 + 0.5;
  EXPECT_NEAR(static_cast<double>(actual), static_cast<double>(expected), tolerance) << what;
}

TEST(LatencyHistogramTest, EmptyHistogramReportsZeroes) {
  LatencyHistogram histogram;
  EXPECT_EQ(histogram.count(), 0u);
  EXPECT_EQ(histogram.Percentile(50), 0u);
  EXPECT_EQ(histogram.Percentile(99.9), 0u);
  EXPECT_EQ(histogram.min(), 0u);
  EXPECT_EQ(histogram.max(), 0u);
  EXPECT_EQ(histogram.mean(), 0.0);
}

TEST(LatencyHistogramTest, SingleValueIsEveryPercentile) {
  LatencyHistogram histogram;
  histogram.Record(123457);
  for (double percentile : {0.1, 50.0, 90.0, 99.0, 99.9, 100.0}) {
    EXPECT_EQ(histogram.Percentile(percentile), 123457u) << percentile;
  }
  EXPECT_EQ(histogram.min(), 123457u);
  EXPECT_EQ(histogram.max(), 123457u);
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  LatencyHistogram histogram;
  for (uint64_t value = 1; value <= 50; ++value) histogram.Record(value);
  EXPECT_EQ(histogram.Percentile(50), 25u);
  EXPECT_EQ(histogram.Percentile(90), 45u);
  EXPECT_EQ(histogram.Percentile(99), 50u);  // rank ceil(49.5) = 50
  EXPECT_EQ(histogram.Percentile(100), 50u);
  EXPECT_EQ(histogram.Percentile(1), 1u);
  EXPECT_DOUBLE_EQ(histogram.mean(), 25.5);
}

TEST(LatencyHistogramTest, UniformDistributionPercentiles) {
  LatencyHistogram histogram;
  std::vector<uint64_t> values;
  for (uint64_t value = 1; value <= 1'000'000; ++value) {
    histogram.Record(value);
    values.push_back(value);
  }
  EXPECT_EQ(histogram.count(), 1'000'000u);
  ExpectClose(histogram.Percentile(50), 500'000, "p50");
  ExpectClose(histogram.Percentile(90), 900'000, "p90");
  ExpectClose(histogram.Percentile(99), 990'000, "p99");
  ExpectClose(histogram.Percentile(99.9), 999'000, "p99.9");
  EXPECT_EQ(histogram.max(), 1'000'000u);
  EXPECT_EQ(histogram.Percentile(100), 1'000'000u);  // clamped to the exact maximum
}

TEST(LatencyHistogramTest, ExponentialDistributionMatchesExactPercentiles) {
  // Inverse-transform samples of an exponential with mean 50 µs, from evenly spaced
  // quantiles: deterministic, and spread over five decades like real latencies.
  LatencyHistogram histogram;
  std::vector<uint64_t> values;
  constexpr int kSamples = 200'000;
  for (int i = 0; i < kSamples; ++i) {
    const double quantile = (i + 0.5) / kSamples;
    const uint64_t nanos = static_cast<uint64_t>(-50'000.0 * std::log(1.0 - quantile));
    histogram.Record(nanos);
    values.push_back(nanos);
  }
  for (double percentile : {50.0, 90.0, 99.0, 99.9, 99.99}) {
    ExpectClose(histogram.Percentile(percentile), ExactPercentile(values, percentile),
                "exponential");
  }
  EXPECT_EQ(histogram.max(), *std::max_element(values.begin(), values.end()));
  EXPECT_EQ(histogram.min(), *std::min_element(values.begin(), values.end()));
}

TEST(LatencyHistogramTest, BimodalTailIsSeparated) {
  // 99% of requests take 100 µs, 1% take 10 ms: p99 is still the fast mode, p99.9 the slow.
  LatencyHistogram histogram;
  for (int i = 0; i < 9900; ++i) histogram.Record(100'000);
  for (int i = 0; i < 100; ++i) histogram.Record(10'000'000);
  ExpectClose(histogram.Percentile(50), 100'000, "p50");
  ExpectClose(histogram.Percentile(99), 100'000, "p99");
  ExpectClose(histogram.Percentile(99.9), 10'000'000, "p99.9");
  EXPECT_EQ(histogram.max(), 10'000'000u);
}

TEST(LatencyHistogramTest, BucketsTileTheRangeWithBoundedWidth) {
  for (int index = 0; index < LatencyHistogram::kBucketCount; ++index) {
    const uint64_t low = LatencyHistogram::BucketLow(index);
    const uint64_t high = LatencyHistogram::BucketHigh(index);
    ASSERT_EQ(LatencyHistogram::BucketIndex(low), index);
    ASSERT_EQ(LatencyHistogram::BucketIndex(high), index);
    if (index + 1 < LatencyHistogram::kBucketCount) {
      ASSERT_EQ(LatencyHistogram::BucketLow(index + 1), high + 1) << index;
    }
    // Width at most 1/64 of the bucket's smallest value (exact buckets below 64).
    ASSERT_LE(static_cast<double>(high - low), static_cast<double>(low) / 64.0) << index;
  }
  EXPECT_EQ(LatencyHistogram::BucketIndex(UINT64_MAX), LatencyHistogram::kBucketCount - 1);
  EXPECT_EQ(LatencyHistogram::BucketHigh(LatencyHistogram::kBucketCount - 1), UINT64_MAX);
}

TEST(LatencyHistogramTest, HugeValuesDoNotOverflow) {
  LatencyHistogram histogram;
  histogram.Record(UINT64_MAX);
  histogram.Record(1);
  EXPECT_EQ(histogram.Percentile(100), UINT64_MAX);
  EXPECT_EQ(histogram.Percentile(50), 1u);
}

TEST(LatencyHistogramTest, MergeEqualsRecordingEverythingInOne) {
  LatencyHistogram all;
  LatencyHistogram first;
  LatencyHistogram second;
  for (uint64_t i = 0; i < 100'000; ++i) {
    // Two threads with different speeds: the second is ten times slower.
    const uint64_t fast = 20'000 + (i * 7919) % 30'000;
    const uint64_t slow = 200'000 + (i * 104729) % 300'000;
    first.Record(fast);
    second.Record(slow);
    all.Record(fast);
    all.Record(slow);
  }
  LatencyHistogram merged;
  merged.Merge(first);
  merged.Merge(second);
  EXPECT_EQ(merged.count(), all.count());
  EXPECT_EQ(merged.min(), all.min());
  EXPECT_EQ(merged.max(), all.max());
  EXPECT_DOUBLE_EQ(merged.mean(), all.mean());
  for (double percentile : {1.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9}) {
    EXPECT_EQ(merged.Percentile(percentile), all.Percentile(percentile)) << percentile;
  }
  // Half the values are fast: the median sits at the top of the fast thread's range and p75
  // in the slow thread's.
  EXPECT_LT(merged.Percentile(50), 50'000u * 101 / 100);
  EXPECT_GT(merged.Percentile(75), 200'000u);
}

TEST(LatencyHistogramTest, MergingAnEmptyHistogramChangesNothing) {
  LatencyHistogram histogram;
  histogram.Record(5000);
  histogram.Record(7000);
  histogram.Merge(LatencyHistogram());
  EXPECT_EQ(histogram.count(), 2u);
  EXPECT_EQ(histogram.min(), 5000u);
  EXPECT_EQ(histogram.max(), 7000u);
  ExpectClose(histogram.Percentile(50), 5000, "p50");
}

}  // namespace
}  // namespace nbdbench
