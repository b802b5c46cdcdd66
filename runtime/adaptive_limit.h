// runtime/adaptive_limit.h — what a connection keeps when its in-flight limit is "auto"
// (ClientOptions::inflight_limit = 0): the InflightLimiter it feeds with every reply, the
// limit it publishes for Client::stats(), and the histogram of send-to-reply latencies the
// limiter sees (ClientStats::wire_latency). Fixed limits have none of this: a connection
// with a fixed limit holds a null pointer and pays one branch per reply.
//
// Written by the connection's ring thread only; read by Client::stats() from any thread
// (relaxed atomics, one writer, as in latency_recorder.h).
#ifndef NBDRING_RUNTIME_ADAPTIVE_LIMIT_H_
#define NBDRING_RUNTIME_ADAPTIVE_LIMIT_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "nbdring/client_stats.h"
#include "nbdring/latency_histogram.h"
#include "runtime/counter.h"
#include "runtime/inflight_limiter.h"

namespace nbdring {

// The in-flight table's capacity, and so the most an automatic limit can reach.
inline constexpr uint32_t kAdaptiveInflightCap = 256;

class AdaptiveLimit {
 public:
  explicit AdaptiveLimit(uint32_t cap) : limiter_(Options(cap)) {
    published_.store(limiter_.settled_limit(), std::memory_order_relaxed);
  }

  // One reply, `latency_ns` after its request was staged. Returns the limit to admit up to.
  uint32_t OnReply(int64_t now_ns, int64_t latency_ns, uint32_t in_flight) {
    const uint64_t latency = latency_ns > 0 ? static_cast<uint64_t>(latency_ns) : 0;
    Increment(wire_counts_[static_cast<size_t>(LatencyHistogram::BucketOf(latency))]);
    Increment(wire_sum_ns_, latency);
    if (limiter_.OnSample(now_ns, latency_ns, in_flight)) {
      published_.store(limiter_.settled_limit(), std::memory_order_relaxed);
    }
    return limiter_.limit();
  }

  uint32_t limit() const { return limiter_.limit(); }

  // Any thread.
  uint32_t published_limit() const { return published_.load(std::memory_order_relaxed); }
  void AddWireLatency(LatencyHistogram* histogram) const {
    for (int i = 0; i < LatencyHistogram::kBucketCount; ++i) {
      const uint64_t count = wire_counts_[static_cast<size_t>(i)].load(std::memory_order_relaxed);
      if (count > 0) histogram->Add(i, count, 0);
    }
    histogram->Add(0, 0, wire_sum_ns_.load(std::memory_order_relaxed));
  }

 private:
  static InflightLimiterOptions Options(uint32_t cap) {
    InflightLimiterOptions options;
    options.cap = cap;
    return options;
  }

  InflightLimiter limiter_;
  std::atomic<uint32_t> published_{0};
  std::array<std::atomic<uint64_t>, LatencyHistogram::kBucketCount> wire_counts_{};
  std::atomic<uint64_t> wire_sum_ns_{0};
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_ADAPTIVE_LIMIT_H_
