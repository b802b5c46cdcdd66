// BatchWindow: the completion-batching wait follows the observed reply rate and the queue
// depth, within [kMinimumWindowNs, max delay], and is never learned from an idle period.
#include "runtime/batch_window.h"

#include "gtest/gtest.h"

namespace nbdring {
namespace {

constexpr int64_t kMaxDelayNs = 50'000;

// Feeds one sample: `replies` replies over exactly one sample period.
void FeedSample(BatchWindow& window, uint64_t* replies_total, int64_t* now_ns,
                uint64_t replies) {
  *replies_total += replies;
  *now_ns += BatchWindow::kSampleNs;
  window.Observe(*replies_total, *now_ns);
}

TEST(BatchWindowTest, WholeDelayUntilARateIsKnown) {
  BatchWindow window(kMaxDelayNs);
  EXPECT_EQ(window.WindowNs(16), kMaxDelayNs);
  window.Observe(0, 1'000);
  window.Observe(10, 2'000);  // shorter than a sample: not yet a rate
  EXPECT_EQ(window.WindowNs(16), kMaxDelayNs);
}

TEST(BatchWindowTest, WindowIsTheTimeForAShareOfTheQueueToComplete) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  FeedSample(window, &replies, &now_ns, 100'000);  // 10 ns per reply
  EXPECT_DOUBLE_EQ(window.ns_per_reply(), 10.0);
  // 10 ns per reply is too fast for any window worth waiting.
  EXPECT_EQ(window.WindowNs(64), 0);

  BatchWindow slower(kMaxDelayNs);
  replies = 0;
  now_ns = 1;
  slower.Observe(replies, now_ns);
  FeedSample(slower, &replies, &now_ns, 125);  // 8 µs per reply
  EXPECT_DOUBLE_EQ(slower.ns_per_reply(), 8'000.0);
  EXPECT_EQ(slower.WindowNs(16), 8'000);         // 16 in flight: one reply's time
  EXPECT_EQ(slower.WindowNs(32), 16'000);
  EXPECT_EQ(slower.WindowNs(128), kMaxDelayNs);  // capped
  EXPECT_EQ(slower.WindowNs(2), 0);              // 1 µs: below the minimum
}

TEST(BatchWindowTest, RateIsSmoothedAcrossSamples) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  FeedSample(window, &replies, &now_ns, 100);  // 10 µs per reply
  FeedSample(window, &replies, &now_ns, 50);   // 20 µs per reply
  EXPECT_DOUBLE_EQ(window.ns_per_reply(), 0.75 * 10'000 + 0.25 * 20'000);
}

TEST(BatchWindowTest, IdleSamplesKeepTheLastRate) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  FeedSample(window, &replies, &now_ns, 100);
  FeedSample(window, &replies, &now_ns, 0);
  FeedSample(window, &replies, &now_ns, 0);
  EXPECT_DOUBLE_EQ(window.ns_per_reply(), 10'000.0);
}

TEST(BatchWindowTest, ZeroDelayDisablesBatching) {
  BatchWindow window(0);
  EXPECT_FALSE(window.enabled());
  EXPECT_EQ(window.WindowNs(1000), 0);
  EXPECT_TRUE(BatchWindow(kMaxDelayNs).enabled());
}

}  // namespace
}  // namespace nbdring
