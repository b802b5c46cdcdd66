// runtime/batch_window.h — how long a ring may wait for more replies before it wakes.
//
// Completion batching lets replies pile up in the sockets so that one wakeup (one
// io_uring_enter, one context switch) handles many of them. Its price: a reply that waits
// holds its request slot idle, and the server has one request fewer queued. A fixed window is
// wrong at both ends — with 64 requests in flight a 50 µs wait idles a few percent of the
// queue, with 16 in flight on a fast server it idles a fifth of it and costs throughput.
//
// So the window is sized from what the ring observes: at the recent reply rate, about
// 1/kQueueShare of the requests in flight should complete during it (on average half of
// those wait, so ~3 % of the queue stands idle), capped by ClientOptions::
// completion_batch_delay. A deep queue or a slow server get the whole delay; a shallow queue
// on a fast server gets a short one. The rate is an exponentially weighted mean over samples
// of at least kSampleNs, so one burst does not swing it.
//
// Whether to batch at all is measured, not assumed. Batching pays when the client has a core
// of its own; when it shares one with the server (a local server, unpinned), waking on every
// reply can be far faster: one connection at QD16 gave 0.93x libnbd's IOPS batching and
// 1.51x not batching, unpinned. So the ring runs in one mode and, after kEpochsBetweenProbes
// epochs of kEpochNs, runs kProbeNs in the other mode and compares reply rates with the epoch
// just before. Not batching must be more than kDirectMustBeFaster times as fast to be chosen,
// because batching saves CPU even where it does not raise throughput (an application issuing
// at a fixed rate sees equal rates in both modes and keeps batching). It must also gain more
// throughput than it costs CPU per reply: the ring's thread CPU time (which, with
// DEFER_TASKRUN, holds the kernel's socket work for this ring too) is read at each epoch's
// end, and not batching is chosen only when the percentage it gains in replies exceeds
// kCpuWeight times the percentage it adds to CPU per reply. Pinned on its own core at one
// connection and 16 in flight, waking on every reply gave +0-28 % replies for +20-35 % CPU
// per reply: losses this rule refuses; sharing a core with the server it gave +60 % for
// +20 %: a win it keeps. A probe costs what the
// other mode costs (4 connections pinned: 2.9 io_uring_enter per reply instead of 0.1), so
// each probe that the chosen mode wins clearly doubles the time to the next, up to
// kMaxEpochsBetweenProbes; a switch or a close call starts over. A probe that favours the
// other mode is confirmed by a second probe two epochs later before the ring switches: a
// 10 ms sample on a shared VM is noisy, and a wrong switch lasts until the next probe.
// Epochs with fewer than kMinimumEpochReplies are not compared. Single-threaded (the ring's loop).
//
// The ring overrides a choice not to batch while many of its connections are busy (WindowNs's
// keep_batching): there the gain the probe sees is unfairness, see ring_loop.cc.
#ifndef NBDRING_RUNTIME_BATCH_WINDOW_H_
#define NBDRING_RUNTIME_BATCH_WINDOW_H_

#include <algorithm>
#include <cstdint>

namespace nbdring {

class BatchWindow {
 public:
  static constexpr uint32_t kQueueShare = 16;
  static constexpr int64_t kSampleNs = 1'000'000;
  // Shorter windows are not worth a timed wait: the ring just waits for the next completion.
  static constexpr int64_t kMinimumWindowNs = 2'000;
  static constexpr int64_t kEpochNs = 25'000'000;
  static constexpr int64_t kProbeNs = 10'000'000;
  static constexpr int kEpochsBetweenProbes = 31;
  static constexpr int kMaxEpochsBetweenProbes = 255;
  // Not batching wins clearly when it is this many times as fast; batching wins clearly
  // whenever not batching is slower at all (batching saves CPU besides).
  static constexpr double kClearMargin = 1.25;
  // The first probe comes early, so that a short run is measured too.
  static constexpr int kEpochsBeforeFirstProbe = 2;
  // A probe that says "switch" is confirmed by another this many epochs later.
  static constexpr int kEpochsBeforeConfirmingProbe = 2;
  static constexpr double kDirectMustBeFaster = 1.10;
  // Each percent more CPU per reply that not batching costs must buy this many percent more
  // replies. The CPU is the client's own overhead, paid whatever the server does.
  static constexpr double kCpuWeight = 2.0;
  static constexpr uint64_t kMinimumEpochReplies = 200;

  explicit BatchWindow(int64_t max_delay_ns) : max_delay_ns_(max_delay_ns) {}

  // False when batching is off (a zero completion_batch_delay).
  bool enabled() const { return max_delay_ns_ > 0; }

  // Feeds the running total of replies received and the current time; call once a turn.
  // `thread_cpu_ns()` returns the ring thread's CPU time so far (CLOCK_THREAD_CPUTIME_ID);
  // it is called only when an epoch ends, not every turn. The two-argument form compares
  // reply rates alone.
  template <typename ThreadCpuClock>
  void Observe(uint64_t replies_total, int64_t now_ns, ThreadCpuClock&& thread_cpu_ns) {
    if (sample_start_ns_ == 0) {
      sample_start_ns_ = now_ns;
      sample_start_replies_ = replies_total;
      epoch_start_ns_ = now_ns;
      epoch_start_replies_ = replies_total;
      epoch_start_cpu_ns_ = thread_cpu_ns();
      return;
    }
    if (now_ns - epoch_start_ns_ >= (probing_ ? kProbeNs : kEpochNs)) {
      EndEpoch(replies_total, now_ns, thread_cpu_ns());
    }
    const int64_t elapsed_ns = now_ns - sample_start_ns_;
    if (elapsed_ns < kSampleNs) return;
    const uint64_t replies = replies_total - sample_start_replies_;
    sample_start_ns_ = now_ns;
    sample_start_replies_ = replies_total;
    if (replies == 0) return;  // idle: keep the last rate rather than learn "infinitely slow"
    const double ns_per_reply = static_cast<double>(elapsed_ns) / static_cast<double>(replies);
    ns_per_reply_ = ns_per_reply_ == 0 ? ns_per_reply : 0.75 * ns_per_reply_ + 0.25 * ns_per_reply;
  }
  void Observe(uint64_t replies_total, int64_t now_ns) {
    Observe(replies_total, now_ns, [] { return int64_t{0}; });
  }

  // The wait for `in_flight` requests; 0 means "do not batch, wake on the next completion".
  // `keep_batching` overrides a choice not to batch (the ring serves many connections, see
  // kFairConnections in ring_loop.cc).
  int64_t WindowNs(uint32_t in_flight, bool keep_batching = false) const {
    if (!enabled() || (!batching() && !keep_batching)) return 0;
    if (ns_per_reply_ == 0) return max_delay_ns_;  // nothing measured yet
    const double window_ns = ns_per_reply_ * in_flight / kQueueShare;
    if (window_ns < kMinimumWindowNs) return 0;
    return std::min(max_delay_ns_, static_cast<int64_t>(window_ns));
  }

  double ns_per_reply() const { return ns_per_reply_; }
  // Whether this epoch batches: the chosen mode, or the other one while probing.
  bool batching() const { return direct_chosen_ == probing_; }
  bool probing() const { return probing_; }
  // How often the chosen mode changed (tests; not yet in ClientStats).
  uint64_t mode_switches() const { return mode_switches_; }
  uint64_t epochs() const { return epochs_; }  // ended so far, probes included

 private:
  void EndEpoch(uint64_t replies_total, int64_t now_ns, int64_t cpu_ns) {
    const uint64_t replies = replies_total - epoch_start_replies_;
    const double rate =
        replies >= kMinimumEpochReplies
            ? static_cast<double>(replies) / static_cast<double>(now_ns - epoch_start_ns_)
            : 0;
    // CPU per reply; 0 when unknown (no clock, or too few replies).
    const double cpu_per_reply =
        rate > 0 && cpu_ns > epoch_start_cpu_ns_
            ? static_cast<double>(cpu_ns - epoch_start_cpu_ns_) / static_cast<double>(replies)
            : 0;
    epoch_start_ns_ = now_ns;
    epoch_start_replies_ = replies_total;
    epoch_start_cpu_ns_ = cpu_ns;
    ++epochs_;
    if (probing_) {
      probing_ = false;
      if (rate > 0 && chosen_rate_ > 0) {  // else too little traffic to compare
        const double direct_rate = direct_chosen_ ? chosen_rate_ : rate;
        const double batching_rate = direct_chosen_ ? rate : chosen_rate_;
        const double direct_cpu = direct_chosen_ ? chosen_cpu_per_reply_ : cpu_per_reply;
        const double batching_cpu = direct_chosen_ ? cpu_per_reply : chosen_cpu_per_reply_;
        // How many times the CPU per reply not batching costs; 1 when not measured.
        const double cpu_ratio =
            direct_cpu > 0 && batching_cpu > 0 ? direct_cpu / batching_cpu : 1.0;
        const double rate_ratio = direct_rate / batching_rate;
        // What not batching gains in replies, less what it costs in CPU per reply (weighted).
        const double direct_gain = (rate_ratio - 1.0) - kCpuWeight * (cpu_ratio - 1.0);
        const bool direct_wins = rate_ratio > kDirectMustBeFaster && direct_gain > 0;
        const bool clear_win = direct_chosen_
                                   ? rate_ratio > kClearMargin && direct_gain > 0
                                   : rate_ratio < 1.0 || direct_gain < 1.0 - kClearMargin;
        if (direct_wins != direct_chosen_ && !switch_pending_) {
          // One probe is 10 ms of a noisy machine: confirm with a second one soon after.
          switch_pending_ = true;
          epochs_between_probes_ = kEpochsBetweenProbes;
          epochs_until_probe_ = kEpochsBeforeConfirmingProbe;
          chosen_rate_ = 0;
          chosen_cpu_per_reply_ = 0;
          return;
        }
        switch_pending_ = false;
        if (direct_wins != direct_chosen_) {
          direct_chosen_ = direct_wins;
          ++mode_switches_;
          epochs_between_probes_ = kEpochsBetweenProbes;
        } else if (clear_win) {
          epochs_between_probes_ =
              std::min(2 * epochs_between_probes_ + 1, kMaxEpochsBetweenProbes);
        } else {
          epochs_between_probes_ = kEpochsBetweenProbes;
        }
      }
      epochs_until_probe_ = epochs_between_probes_;
      chosen_rate_ = 0;
      chosen_cpu_per_reply_ = 0;
      return;
    }
    chosen_rate_ = rate;
    chosen_cpu_per_reply_ = cpu_per_reply;
    if (rate > 0 && --epochs_until_probe_ <= 0) probing_ = true;
  }

  int64_t max_delay_ns_;
  // Mode probing (see the top of this file).
  bool direct_chosen_ = false;
  bool probing_ = false;
  bool switch_pending_ = false;  // the last probe favoured the other mode; confirming
  int epochs_until_probe_ = kEpochsBeforeFirstProbe;
  int epochs_between_probes_ = kEpochsBetweenProbes;
  int64_t epoch_start_ns_ = 0;
  uint64_t epoch_start_replies_ = 0;
  double chosen_rate_ = 0;  // replies per ns in the last epoch of the chosen mode; 0: unknown
  double chosen_cpu_per_reply_ = 0;  // ring-thread CPU ns per reply in that epoch; 0: unknown
  int64_t epoch_start_cpu_ns_ = 0;
  uint64_t mode_switches_ = 0;
  uint64_t epochs_ = 0;
  int64_t sample_start_ns_ = 0;
  uint64_t sample_start_replies_ = 0;
  double ns_per_reply_ = 0;  // 0 until the first sample
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_BATCH_WINDOW_H_
