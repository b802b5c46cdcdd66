// runtime/latency_recorder.h — one ring's live latency histograms (nbdring/
// latency_histogram.h buckets), per kind of request. Written by the ring's thread only, at
// each operation's completion (relaxed load+store: one writer, see counter.h); read by
// Client::stats() from any thread, which may see a count and a sum a completion apart.
#ifndef NBDRING_RUNTIME_LATENCY_RECORDER_H_
#define NBDRING_RUNTIME_LATENCY_RECORDER_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "nbd/wire.h"
#include "nbdring/client_stats.h"
#include "nbdring/latency_histogram.h"
#include "runtime/counter.h"

namespace nbdring {

class LatencyRecorder {
 public:
  void Record(nbd::Command command, int64_t latency_ns) {
    Live& live = command == nbd::Command::kRead    ? read_
                 : command == nbd::Command::kWrite ? write_
                                                   : other_;
    const uint64_t latency = latency_ns > 0 ? static_cast<uint64_t>(latency_ns) : 0;
    Increment(live.counts[static_cast<size_t>(LatencyHistogram::BucketOf(latency))]);
    Increment(live.sum_ns, latency);
  }

  void AddTo(ClientStats* stats) const {
    AddLive(read_, &stats->read_latency);
    AddLive(write_, &stats->write_latency);
    AddLive(other_, &stats->other_latency);
  }

 private:
  struct Live {
    std::array<std::atomic<uint64_t>, LatencyHistogram::kBucketCount> counts{};
    std::atomic<uint64_t> sum_ns{0};
  };
  static void AddLive(const Live& live, LatencyHistogram* histogram) {
    for (int i = 0; i < LatencyHistogram::kBucketCount; ++i) {
      const uint64_t count = live.counts[static_cast<size_t>(i)].load(std::memory_order_relaxed);
      if (count > 0) histogram->Add(i, count, 0);
    }
    histogram->Add(0, 0, live.sum_ns.load(std::memory_order_relaxed));
  }

  Live read_;
  Live write_;
  Live other_;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_LATENCY_RECORDER_H_
