// runtime/inflight_limiter.h — a connection's adaptive in-flight limit
// (ClientOptions::inflight_limit = 0, "auto"). Sans-I/O: it is fed one sample per reply (the
// time the reply arrived, how long its request was in flight, and how many requests were in
// flight then, itself included) and answers with the limit
// the connection admits requests up to. No allocation, no lock, no clock of its own: the
// connection feeds it from its ring thread, and the unit test from a simulated clock.
//
// The idea. A server's throughput rises with the requests in flight until something in it
// saturates (CPU, threads, bandwidth); past that knee more requests only wait in its queues,
// and latency grows with no gain. Latency-based limiters (TCP Vegas, Netflix's gradient
// limiter) estimate the knee from the rise of latency over its unloaded value; that misses
// servers whose throughput keeps creeping up past the knee because they batch (nbdkit and
// the ring both handle more replies per wakeup at depth). So this one climbs on what it is
// meant to buy, throughput, and uses latency only through it (Little's law):
//
//   * It measures in periods: at least `period_ns` and `min_samples` replies (or
//     `long_period_ns` and `few_samples`, for slow servers), and at least two mean
//     latencies long, so a change of the limit has settled in half of the period.
//     A period's throughput is replies per second. A count of n replies is uncertain by one,
//     so every threshold below widens by 1/n: a slow server's period holds a handful of
//     replies, and one more or less must not decide anything. (Little's law, mean in-flight
//     over mean latency, was tried instead and is worse: right after a change of the limit,
//     the latencies of requests admitted under the old one skew it by tens of percent.)
//     The mean in-flight count tells whether the caller filled a higher limit at all.
//   * A probe cycle measures the current limit L (period A), then L_up = L x 1.25 (at least
//     L + 1; period B). If B's throughput beat A's by at least `up_gain` of the relative step
//     (default a tenth: 25 % more requests in flight must buy 2.5 % more throughput), and B
//     really had more requests in flight (the caller was not the limit), L becomes L_up and
//     the next cycle starts at once. Otherwise it measures L_down = L / 1.25 (period C):
//     if C lost less than `down_loss` (1 %) of A's throughput, L becomes L_down (the same
//     work with less queueing, so lower latency). Else L stays.
//   * Startup: while every up-probe gains at least half its step (the server is far from
//     saturated), the next probe doubles L instead; the first weaker result ends startup for
//     good. Consecutive down moves grow their step the same way (x1.25, x1.56, ... up to
//     x2): a slow server whose latency is long makes for long periods, and walking down
//     from far above its knee in steps of 1.25 would take many of them.
//   * While L stays, the pause before the next cycle doubles (from one period up to
//     `max_probe_gap_ns`, 0.4 s, or 8 periods of a slow server): a settled connection runs
//     at L nearly all the time, and still re-probes a few times a second, because servers
//     change. A move resets the gap, and so does a pause whose throughput differs by more
//     than a quarter from the previous pause's, or its latency by more than 2x: the server
//     changed, so the next cycles follow at once.
//   * Far probes: a server may have a second rise past a plateau (nbdkit memory and qemu-nbd
//     on the sweep machine gained 10-20 % from 8 to 128 in flight, 1-4 % per 1.25x step, which
//     a 40 ms period cannot tell from noise). After two cycles that kept L, then every
//     `far_every` (16, about 8 s when settled; two again after a pause saw the server
//     change), the up-probe goes to L x `far_step` (4) instead; L moves there if the
//     throughput grew by what `up_gain` asks of each 1.25x step, compounded over the far
//     step (x1.166 for 4x), over L measured both before and after it (one lucky period on a
//     busy machine must not move L 4x), and the ordinary cycle climbs or walks down from
//     there.
//   * L stays within [1, cap]; `cap` is the table's capacity.
//
// Each decision compares periods measured back to back, so a slow drift of the server or
// the machine (noise on a shared VM) moves both sides alike. On a flat stretch of the
// throughput curve noise makes "up" rare (it needs +2.5 %) and "down" likely (it needs only
// "no worse than -1 %"), so L drifts down to where throughput starts to fall: the knee.
#ifndef NBDRING_RUNTIME_INFLIGHT_LIMITER_H_
#define NBDRING_RUNTIME_INFLIGHT_LIMITER_H_

#include <cstdint>
#include <climits>

namespace nbdring {

struct InflightLimiterOptions {
  uint32_t cap = 256;       // the most it may ever allow (the in-flight table's capacity)
  uint32_t initial = 4;     // where it starts
  int64_t period_ns = 40'000'000;        // shortest measuring period
  uint32_t min_samples = 64;             // replies a period needs at least...
  // ...unless it has lasted this long and has `few_samples`: a slow server (large requests
  // at a few MB/s) must still get a decision within a second or two.
  int64_t long_period_ns = 250'000'000;
  uint32_t few_samples = 8;
  int64_t max_probe_gap_ns = 400'000'000;  // longest pause between probe cycles
  double step = 1.25;       // L_up = L x step, L_down = L / step
  double up_gain = 0.1;     // up when throughput grew by this share of the step's growth
  double down_loss = 0.01;  // down when throughput fell by less than this
  // Every `far_every` cycles that kept L (the first time after two, and two after the server
  // changed), one probe goes to L x far_step instead of L x step, and L moves there if it
  // gained what `up_gain` asks of each 1.25x step, compounded (x1.166 for 4x). A first knee
  // followed by a plateau where a 1.25x step buys about 1 % (less than the noise of a 40 ms
  // period) and then a second rise stops the small probes; a 4x probe sees the rise above
  // the noise. 16 cycles of a settled connection last about 8 s, so far probes (4x the
  // latency while they last) take about 0.5 % of the time, below what a p99 sees.
  // 0 turns far probes off.
  double far_step = 4;
  uint32_t far_every = 16;
  // A period longer than this without enough samples (an idle connection) is dropped and
  // the cycle restarts, instead of reading idleness as low throughput.
  int64_t stale_period_ns = 1'000'000'000;
};

class InflightLimiter {
 public:
  explicit InflightLimiter(const InflightLimiterOptions& options = {});

  // One reply: it arrived at `now_ns` (monotonic), `latency_ns` after its request was sent,
  // with `in_flight` requests in flight (this one included). Returns true when the limit
  // changed.
  bool OnSample(int64_t now_ns, int64_t latency_ns, uint32_t in_flight) {
    if (period_start_ns_ == INT64_MIN) period_start_ns_ = now_ns;  // the very first reply
    ++samples_;
    latency_sum_ns_ += latency_ns > 0 ? latency_ns : 0;
    in_flight_sum_ += in_flight;
    const int64_t elapsed_ns = now_ns - period_start_ns_;
    if (elapsed_ns < period_end_after_ns_) return false;
    if (samples_ < options_.min_samples &&
        (samples_ < options_.few_samples || elapsed_ns < options_.long_period_ns)) {
      return false;
    }
    return EndPeriod(now_ns);
  }

  // What admission uses: the connection takes new requests while fewer are in flight.
  uint32_t limit() const { return active_; }
  // The limit it settled on (what it returns to between probes).
  uint32_t settled_limit() const { return settled_; }
  uint32_t cap() const { return options_.cap; }
  // Mean latency and throughput of the last finished period (for stats and tests).
  int64_t last_latency_ns() const { return last_latency_ns_; }
  double last_throughput() const { return last_throughput_; }
  uint64_t moves() const { return moves_; }

 private:
  enum class Phase { kWait, kMeasure, kUp, kDown, kFar, kFarCheck };

  bool EndPeriod(int64_t now_ns);
  void StartPeriod(Phase phase, uint32_t active);
  uint32_t Up(uint32_t limit) const;
  uint32_t Down(uint32_t limit) const;
  uint32_t Far(uint32_t limit) const;
  bool startup_ = true;
  // Cycles that kept L since the last far probe; the first far probe comes after two.
  uint32_t stays_since_far_;
  // A far probe that gained, while L is measured again: its limit, throughput and the ratio
  // it had to beat.
  uint32_t far_limit_ = 0;
  double far_throughput_ = 0;
  double far_wanted_ = 0;
  double down_step_;

  InflightLimiterOptions options_;
  Phase phase_ = Phase::kMeasure;
  uint32_t settled_;
  uint32_t active_;
  int64_t probe_gap_ns_;
  int64_t wait_left_ns_ = 0;

  // The period being measured.
  int64_t period_start_ns_ = 0;
  int64_t period_end_after_ns_;
  uint32_t samples_ = 0;
  int64_t latency_sum_ns_ = 0;
  uint64_t in_flight_sum_ = 0;

  // Period A's throughput, and the last period's figures.
  double base_throughput_ = 0;
  // The previous pause's figures (a pause is a kWait period at the settled limit).
  double pause_throughput_ = 0;
  int64_t pause_latency_ns_ = 0;
  double last_throughput_ = 0;
  int64_t last_latency_ns_ = 0;
  uint64_t moves_ = 0;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_INFLIGHT_LIMITER_H_
