// BatchWindow: the completion-batching wait follows the observed reply rate and the queue
// depth, within [kMinimumWindowNs, max delay], and is never learned from an idle period.
#include "runtime/batch_window.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbdring {
namespace {

using ::testing::Each;
using ::testing::ElementsAre;

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

// Runs one epoch at `replies_per_ms` and returns whether it batched. Observe is called each
// millisecond, as a busy ring would (more often, really).
bool RunEpoch(BatchWindow& window, uint64_t* replies_total, int64_t* now_ns,
              uint64_t replies_per_ms) {
  const bool batching = window.batching();
  const uint64_t epochs = window.epochs();
  while (window.epochs() == epochs) {  // a probe is shorter than an epoch
    *replies_total += replies_per_ms;
    *now_ns += 1'000'000;
    window.Observe(*replies_total, *now_ns);
  }
  return batching;
}

// A ring whose throughput depends on the mode: `batching_rate` or `direct_rate` replies/ms.
struct Environment {
  uint64_t batching_rate;
  uint64_t direct_rate;
};

// Runs `epochs` epochs; returns how many of them batched.
int RunEpochs(BatchWindow& window, uint64_t* replies_total, int64_t* now_ns,
              Environment environment, int epochs) {
  int batched = 0;
  for (int i = 0; i < epochs; ++i) {
    const uint64_t rate = window.batching() ? environment.batching_rate : environment.direct_rate;
    batched += RunEpoch(window, replies_total, now_ns, rate) ? 1 : 0;
  }
  return batched;
}

TEST(BatchWindowTest, BatchesWhenNotBatchingIsNoFaster) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  EXPECT_TRUE(window.batching());
  // Equal rates (an application issuing at a fixed rate): batching saves CPU, so it stays.
  const int epochs = 4 * BatchWindow::kEpochsBetweenProbes;
  const int batched = RunEpochs(window, &replies, &now_ns, {1000, 1000}, epochs);
  EXPECT_EQ(window.mode_switches(), 0u);
  EXPECT_TRUE(window.batching());
  // Only the probes ran without batching: one epoch in every kEpochsBetweenProbes + 1.
  EXPECT_GE(batched, epochs - 5);
  // Faster without batching, but within the margin: still batching.
  RunEpochs(window, &replies, &now_ns, {1000, 1080}, epochs);
  EXPECT_EQ(window.mode_switches(), 0u);
}

TEST(BatchWindowTest, StopsBatchingWhenWakingOnEveryReplyIsClearlyFaster) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  // The first probe comes after kEpochsBeforeFirstProbe epochs; a second one confirms it.
  RunEpochs(window, &replies, &now_ns, {1000, 1500}, BatchWindow::kEpochsBeforeFirstProbe + 1);
  EXPECT_EQ(window.mode_switches(), 0u);
  EXPECT_TRUE(window.batching());
  RunEpochs(window, &replies, &now_ns, {1000, 1500},
            BatchWindow::kEpochsBeforeConfirmingProbe + 1);
  EXPECT_EQ(window.mode_switches(), 1u);
  EXPECT_FALSE(window.batching());
  EXPECT_EQ(window.WindowNs(1000), 0);
  // It keeps probing batching, and stays direct while direct stays clearly faster, probing
  // less and less often.
  const int epochs = 4 * BatchWindow::kEpochsBetweenProbes;
  const int batched = RunEpochs(window, &replies, &now_ns, {1000, 1500}, epochs);
  EXPECT_EQ(window.mode_switches(), 1u);
  EXPECT_GE(batched, 1);  // the probes: after 63 epochs, then 127 more
  EXPECT_LE(batched, 2);
  // The environment changes (say the client got a core of its own): back to batching.
  RunEpochs(window, &replies, &now_ns, {1000, 900}, BatchWindow::kMaxEpochsBetweenProbes + 1);
  EXPECT_EQ(window.mode_switches(), 2u);
  EXPECT_TRUE(window.batching());
}

TEST(BatchWindowTest, KeepBatchingOverridesAChoiceNotToBatch) {
  // The ring asks for this with many connections busy (fairness beats the probe's gains).
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  RunEpochs(window, &replies, &now_ns, {1000, 1500},
            BatchWindow::kEpochsBeforeFirstProbe + BatchWindow::kEpochsBeforeConfirmingProbe + 2);
  ASSERT_FALSE(window.batching());
  EXPECT_EQ(window.WindowNs(1000), 0);
  EXPECT_GT(window.WindowNs(1000, /*keep_batching=*/true), 0);
  EXPECT_LE(window.WindowNs(1000, /*keep_batching=*/true), kMaxDelayNs);
  BatchWindow off(0);  // a zero delay still means no batching at all
  EXPECT_EQ(off.WindowNs(1000, /*keep_batching=*/true), 0);
}

// The chosen-mode epochs between consecutive probes, over `epochs` epochs.
std::vector<int> GapsBetweenProbes(BatchWindow& window, uint64_t* replies_total, int64_t* now_ns,
                                   Environment environment, int epochs) {
  std::vector<int> gaps;
  int gap = 0;
  for (int i = 0; i < epochs; ++i) {
    if (window.probing()) {
      gaps.push_back(gap);
      gap = 0;
    } else {
      ++gap;
    }
    RunEpochs(window, replies_total, now_ns, environment, 1);
  }
  return gaps;
}

TEST(BatchWindowTest, ProbesThatBatchingWinsClearlyComeLessAndLessOften) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  // Not batching is slower: each probe doubles the gap, up to kMaxEpochsBetweenProbes.
  EXPECT_THAT(GapsBetweenProbes(window, &replies, &now_ns, {1000, 800}, 1100),
              ElementsAre(2, 63, 127, 255, 255, 255));
  EXPECT_EQ(window.mode_switches(), 0u);
  // A close call (not batching as fast, yet not enough faster) starts the gaps over.
  std::vector<int> gaps = GapsBetweenProbes(window, &replies, &now_ns, {1000, 1000}, 400);
  ASSERT_GE(gaps.size(), 3u);
  gaps.erase(gaps.begin());  // the rest of the 255 started before
  EXPECT_THAT(gaps, Each(BatchWindow::kEpochsBetweenProbes));
  EXPECT_EQ(window.mode_switches(), 0u);
}

TEST(BatchWindowTest, OneNoisyProbeDoesNotSwitch) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  // The first probe sees not batching 1.5x as fast; the confirming probe sees it slower.
  RunEpochs(window, &replies, &now_ns, {1000, 1500}, BatchWindow::kEpochsBeforeFirstProbe + 1);
  RunEpochs(window, &replies, &now_ns, {1000, 900},
            BatchWindow::kEpochsBeforeConfirmingProbe + 1);
  EXPECT_EQ(window.mode_switches(), 0u);
  EXPECT_TRUE(window.batching());
}

TEST(BatchWindowTest, QuietEpochsNeitherProbeNorDecide) {
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  window.Observe(replies, now_ns);
  // Fewer than kMinimumEpochReplies per epoch: nothing to compare, never a probe.
  const int epochs = 3 * BatchWindow::kEpochsBetweenProbes;
  EXPECT_EQ(RunEpochs(window, &replies, &now_ns, {1, 1000}, epochs), epochs);
  EXPECT_FALSE(window.probing());
  EXPECT_EQ(window.mode_switches(), 0u);
}

// A ring whose throughput and CPU per reply depend on the mode, with a thread CPU clock that
// the window reads at epoch ends.
struct CostedEnvironment {
  uint64_t batching_rate;  // replies per ms
  uint64_t direct_rate;
  int64_t batching_cpu_ns_per_reply;
  int64_t direct_cpu_ns_per_reply;
};

// Runs `epochs` epochs, charging CPU per reply by mode; returns how many batched.
int RunCostedEpochs(BatchWindow& window, uint64_t* replies_total, int64_t* now_ns,
                    int64_t* cpu_ns, CostedEnvironment environment, int epochs) {
  int batched = 0;
  for (int i = 0; i < epochs; ++i) {
    const bool batching = window.batching();
    const uint64_t epoch = window.epochs();
    while (window.epochs() == epoch) {
      const uint64_t rate = batching ? environment.batching_rate : environment.direct_rate;
      *replies_total += rate;
      *now_ns += 1'000'000;
      *cpu_ns += static_cast<int64_t>(rate) * (batching ? environment.batching_cpu_ns_per_reply
                                                        : environment.direct_cpu_ns_per_reply);
      window.Observe(*replies_total, *now_ns, [cpu_ns] { return *cpu_ns; });
    }
    batched += batching ? 1 : 0;
  }
  return batched;
}

TEST(BatchWindowTest, KeepsBatchingWhenNotBatchingCostsMoreCpuThanItGains) {
  // Pinned, one connection, 16 in flight (measured): +15 % replies for +35 % CPU per reply.
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  int64_t cpu_ns = 1;
  window.Observe(replies, now_ns, [&cpu_ns] { return cpu_ns; });
  const int epochs = 4 * BatchWindow::kEpochsBetweenProbes;
  RunCostedEpochs(window, &replies, &now_ns, &cpu_ns, {1000, 1150, 9000, 12150}, epochs);
  EXPECT_EQ(window.mode_switches(), 0u);
  EXPECT_TRUE(window.batching());
  // Also measured pinned: +28 % replies for +20 % CPU per reply. Not worth it either.
  RunCostedEpochs(window, &replies, &now_ns, &cpu_ns, {1000, 1280, 9000, 10800}, epochs);
  EXPECT_EQ(window.mode_switches(), 0u);
  EXPECT_TRUE(window.batching());
  // The same rates with the CPU unmeasured: the rate rule alone would switch.
  BatchWindow rate_only(kMaxDelayNs);
  replies = 0;
  now_ns = 1;
  rate_only.Observe(replies, now_ns);
  RunEpochs(rate_only, &replies, &now_ns, {1000, 1150},
            BatchWindow::kEpochsBeforeFirstProbe + BatchWindow::kEpochsBeforeConfirmingProbe + 2);
  EXPECT_EQ(rate_only.mode_switches(), 1u);
}

TEST(BatchWindowTest, StopsBatchingWhenTheGainOutweighsTheCpu) {
  // Sharing a core with the server (measured): +60 % replies for +20 % CPU per reply.
  BatchWindow window(kMaxDelayNs);
  uint64_t replies = 0;
  int64_t now_ns = 1;
  int64_t cpu_ns = 1;
  window.Observe(replies, now_ns, [&cpu_ns] { return cpu_ns; });
  RunCostedEpochs(window, &replies, &now_ns, &cpu_ns, {1000, 1600, 9000, 10800},
                  BatchWindow::kEpochsBeforeFirstProbe + BatchWindow::kEpochsBeforeConfirmingProbe + 2);
  EXPECT_EQ(window.mode_switches(), 1u);
  EXPECT_FALSE(window.batching());
  // Later waking on every reply gets dearer than it gains: back to batching at a probe.
  RunCostedEpochs(window, &replies, &now_ns, &cpu_ns, {1000, 1200, 9000, 13500},
                  BatchWindow::kMaxEpochsBetweenProbes + 1);
  EXPECT_EQ(window.mode_switches(), 2u);
  EXPECT_TRUE(window.batching());
}

}  // namespace
}  // namespace nbdring
