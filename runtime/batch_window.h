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
// of at least kSampleNs, so one burst does not swing it. Single-threaded (the ring's loop).
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

  explicit BatchWindow(int64_t max_delay_ns) : max_delay_ns_(max_delay_ns) {}

  // False when batching is off (a zero completion_batch_delay).
  bool enabled() const { return max_delay_ns_ > 0; }

  // Feeds the running total of replies received and the current time; call once a turn.
  void Observe(uint64_t replies_total, int64_t now_ns) {
    if (sample_start_ns_ == 0) {
      sample_start_ns_ = now_ns;
      sample_start_replies_ = replies_total;
      return;
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

  // The wait for `in_flight` requests; 0 means "do not batch, wake on the next completion".
  int64_t WindowNs(uint32_t in_flight) const {
    if (!enabled()) return 0;
    if (ns_per_reply_ == 0) return max_delay_ns_;  // nothing measured yet
    const double window_ns = ns_per_reply_ * in_flight / kQueueShare;
    if (window_ns < kMinimumWindowNs) return 0;
    return std::min(max_delay_ns_, static_cast<int64_t>(window_ns));
  }

  double ns_per_reply() const { return ns_per_reply_; }

 private:
  int64_t max_delay_ns_;
  int64_t sample_start_ns_ = 0;
  uint64_t sample_start_replies_ = 0;
  double ns_per_reply_ = 0;  // 0 until the first sample
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_BATCH_WINDOW_H_
