// Latency histograms in ClientStats and their OpenMetrics text, against nbdkit's delay filter
// (reads take at least 20 ms there), and the histogram's bucket arithmetic.
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "nbdring/latency_histogram.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::testing::HasSubstr;

TEST(LatencyHistogramTest, BucketsCoverEveryValueWithinAnEighth) {
  for (uint64_t value : {uint64_t{0}, uint64_t{1}, uint64_t{1023}, uint64_t{1024}, uint64_t{1151},
                         uint64_t{1152}, uint64_t{20'000'000}, uint64_t{999'999'999},
                         (uint64_t{1} << 36) - 1, uint64_t{1} << 36, UINT64_MAX}) {
    const int bucket = LatencyHistogram::BucketOf(value);
    ASSERT_GE(bucket, 0);
    ASSERT_LT(bucket, LatencyHistogram::kBucketCount);
    if (bucket < LatencyHistogram::kBucketCount - 1) {
      EXPECT_GT(LatencyHistogram::BucketUpperBoundNs(bucket), value) << value;
    } else {
      EXPECT_EQ(LatencyHistogram::BucketUpperBoundNs(bucket), UINT64_MAX);  // no bound
    }
    if (bucket > 0) {
      const uint64_t lower = LatencyHistogram::BucketUpperBoundNs(bucket - 1);
      EXPECT_LE(lower, value) << value;
      if (bucket < LatencyHistogram::kBucketCount - 1) {
        // A bucket is at most an eighth of its lower bound wide.
        EXPECT_LE(LatencyHistogram::BucketUpperBoundNs(bucket) - lower, lower / 8) << value;
      }
    }
  }
  LatencyHistogram histogram;
  EXPECT_EQ(histogram.PercentileNs(0.5), 0u);
  histogram.Add(LatencyHistogram::BucketOf(20'000'000), 9, 9 * 20'000'000);
  histogram.Add(LatencyHistogram::BucketOf(900'000'000), 1, 900'000'000);
  EXPECT_GT(histogram.PercentileNs(0.5), 20'000'000u);
  EXPECT_LE(histogram.PercentileNs(0.5), 22'500'000u);
  EXPECT_GT(histogram.PercentileNs(0.99), 900'000'000u);
}

// The value of the OpenMetrics sample `name` (exact, labels included), or -1.
double Sample(const std::string& text, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, name + " ")) {
      double value = -1;
      if (absl::SimpleAtod(line.substr(name.size() + 1), &value)) return value;
    }
  }
  return -1;
}

TEST(LatencyStatsTest, PerCommandHistogramsAndOpenMetrics) {
  auto server = ServerProcess::StartNbdkit({"--filter=delay", "memory", "8M", "rdelay=20ms"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> buffer(4096);
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE((*client)->PreadSync(buffer.data(), buffer.size(), 4096 * i).ok());
  }
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE((*client)->PwriteSync(buffer.data(), buffer.size(), 4096 * i).ok());
  }
  ASSERT_TRUE((*client)->FlushSync().ok());
  const ClientStats stats = (*client)->stats();
  EXPECT_EQ(stats.read_latency.count(), 8u);
  EXPECT_EQ(stats.write_latency.count(), 4u);
  EXPECT_EQ(stats.other_latency.count(), 1u);
  EXPECT_GE(stats.read_latency.PercentileNs(0.5), 20'000'000u);
  EXPECT_LT(stats.read_latency.PercentileNs(0.5), 200'000'000u);
  EXPECT_GE(stats.read_latency.sum_ns(), 8 * 20'000'000u);
  EXPECT_LT(stats.write_latency.PercentileNs(0.99), 20'000'000u);  // writes are not delayed

  const std::string text = OpenMetricsText(stats, "export=\"t\"");
  EXPECT_TRUE(absl::EndsWith(text, "# EOF\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE nbdring_request_latency_seconds histogram\n"));
  EXPECT_EQ(Sample(text, "nbdring_requests_total{export=\"t\"}"), 13);
  EXPECT_EQ(Sample(text, "nbdring_inflight_limit{export=\"t\"}"), 64);  // the fixed default
  EXPECT_EQ(stats.inflight_limit, 64u);
  EXPECT_EQ(stats.wire_latency.count(), 0u);  // kept with an automatic limit only
  EXPECT_EQ(Sample(text, "nbdring_request_latency_seconds_count{export=\"t\",command=\"read\"}"), 8);
  EXPECT_EQ(
      Sample(text, "nbdring_request_latency_seconds_bucket{export=\"t\",command=\"read\",le=\"+Inf\"}"),
      8);
  // Cumulative buckets: non-decreasing, none of the reads under 16.8 ms (2^24 ns), all of
  // them by 2^31 ns.
  double previous = 0;
  int buckets = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, "nbdring_request_latency_seconds_bucket{export=\"t\",command=\"read\"")) {
      continue;
    }
    double value = 0;
    ASSERT_TRUE(absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) << line;
    EXPECT_GE(value, previous) << line;
    previous = value;
    ++buckets;
  }
  EXPECT_EQ(buckets, LatencyHistogram::kMaxExponent - LatencyHistogram::kMinExponent + 2);
  EXPECT_EQ(Sample(text, "nbdring_request_latency_seconds_bucket{export=\"t\",command=\"read\",le=\"0.016777216\"}"), 0);
  EXPECT_EQ(Sample(text, "nbdring_request_latency_seconds_bucket{export=\"t\",command=\"read\",le=\"2.14748365\"}"), 8);
}

}  // namespace
}  // namespace nbdring
