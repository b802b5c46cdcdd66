// tools/bench/run.h — one measured run of one engine, and what the engines share.
//
// A run has three phases on the steady clock: ramp (I/O flows but is not counted), the
// measured window (every completion inside it is counted and its latency recorded), and the
// drain (no new I/O; in-flight requests finish uncounted). The window ends at the deadline,
// when --size bytes have been counted, when an I/O fails, or on SIGINT/SIGTERM — whichever is
// first. Engines call Complete() from their I/O threads for every completion; it decides
// whether the I/O counts and whether to issue another, without locks or allocation.
//
// CPU use is getrusage(RUSAGE_SELF) over the window, so it includes every thread of the
// process (ring threads, poll threads, io_uring workers) and the kernel work done for them.
#ifndef NBDRING_TOOLS_BENCH_RUN_H_
#define NBDRING_TOOLS_BENCH_RUN_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tools/bench/histogram.h"
#include "tools/bench/workload.h"

namespace nbdbench {

enum class EngineKind { kNbdring, kLibnbd };
const char* EngineName(EngineKind engine);

// Everything an engine needs, already validated against the export.
struct RunSpec {
  std::string uri;
  ReadWrite rw = ReadWrite::kRandRead;
  int read_percent = 70;  // randrw only
  uint64_t block_size = 4096;
  int iodepth = 16;  // per connection
  int connections = 1;  // per client
  int threads = 1;
  // Clients, each with `connections`: nbdring's attach to one shared Runtime of `threads`
  // ring threads; libnbd opens clients x connections handles.
  int clients = 1;
  absl::Duration ramp = absl::Seconds(1);
  absl::Duration runtime = absl::Seconds(5);  // zero: no time limit (then size_limit is set)
  uint64_t size_limit = 0;                    // bytes to count; zero: no limit
  uint64_t region_offset = 0;
  uint64_t region_length = 0;
  bool verify = false;       // writes carry the pattern; every read is checked against it
  std::vector<int> cpus;     // empty: no pinning
  absl::Duration batch_delay = absl::Microseconds(50);  // nbdring only
  // nbdring only: caller-driven (ClientOptions::threads = 0), turned by Client::Poll on one
  // thread of the benchmark's own instead of the library's ring threads.
  bool polled = false;
  int inflight_limit = -1;  // nbdring only: -1 = iodepth, 0 = auto, else fixed
  bool live_status = false;  // one-line progress on stdout, rewritten each second
};

// The measured outcome of one run.
struct RunResult {
  EngineKind engine = EngineKind::kNbdring;
  ReadWrite rw = ReadWrite::kRandRead;
  uint64_t block_size = 0;
  int iodepth = 0;
  int connections = 0;  // as opened (may be fewer than asked, see notes)
  int threads = 0;
  uint64_t ios = 0;
  uint64_t bytes = 0;
  double seconds = 0;      // length of the measured window
  double cpu_seconds = 0;  // user + system over the window
  LatencyHistogram latency;
  // io_uring_enter calls and SQEs over the window; only engines that have them.
  std::optional<uint64_t> enters;
  std::optional<uint64_t> sqes;
  bool interrupted = false;  // a signal ended the window early
  std::vector<std::string> notes;
  // I/Os each connection completed in the window (empty when the engine cannot tell): how
  // evenly the server and the client served the connections.
  std::vector<uint64_t> connection_ios;
  // nbdring: the client's in-flight limit at the end of the window, summed over connections
  // (ClientStats::inflight_limit); with --inflight_limit=auto also the latency from staging
  // to reply over the window (ClientStats::wire_latency: without the wait for a slot).
  std::optional<uint64_t> inflight_limit;
  std::optional<uint64_t> wire_p50_ns;
  std::optional<uint64_t> wire_p99_ns;

  double iops() const { return seconds > 0 ? static_cast<double>(ios) / seconds : 0; }
  double mib_per_s() const {
    return seconds > 0 ? static_cast<double>(bytes) / seconds / (1024.0 * 1024.0) : 0;
  }
  double cpu_percent() const { return seconds > 0 ? 100.0 * cpu_seconds / seconds : 0; }
  double cpu_us_per_io() const {
    return ios > 0 ? cpu_seconds * 1e6 / static_cast<double>(ios) : 0;
  }
};

// The spread of per-connection IOPS of a run: lowest, median and highest.
struct ConnectionSpread {
  double min_iops = 0;
  double median_iops = 0;
  double max_iops = 0;
};
// Nothing when the run has no per-connection counts.
std::optional<ConnectionSpread> SpreadOf(const RunResult& result);

// Process-wide: lets the signal thread end whatever run is under way. A first SIGINT/SIGTERM
// ends the measured window cleanly; the run still drains and reports.
class RunControl {
 public:
  void Interrupt(int signal_number);
  int interrupt_signal() const { return interrupt_signal_.load(std::memory_order_acquire); }
  bool interrupted() const { return interrupt_signal() != 0; }

  // Wakes whoever waits in Run::Measure (after an interrupt, a size limit or a failure).
  void Wake();
  std::mutex& mutex() { return mutex_; }
  std::condition_variable& wakeup() { return wakeup_; }

 private:
  std::atomic<int> interrupt_signal_{0};
  std::mutex mutex_;
  std::condition_variable wakeup_;
};

// Counters of one I/O thread. Only that thread writes; `ios` is atomic so the status line may
// read it meanwhile (relaxed loads and stores: plain moves on x86).
struct ThreadStats {
  LatencyHistogram latency;
  std::atomic<uint64_t> ios{0};
  uint64_t bytes = 0;
};

// Engine counters sampled at both ends of the window.
// Cumulative counters an engine can report; Run samples them at the window's edges.
struct EngineCounters {
  std::optional<uint64_t> enters;  // io_uring engines only
  std::optional<uint64_t> sqes;
  std::vector<uint64_t> connection_ios;  // I/Os completed on each connection; empty: unknown
};

class Run {
 public:
  Run(const RunSpec& spec, EngineKind engine, RunControl& control);
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  static int64_t NowNanos();

  // I/O threads. A new ThreadStats (stable address) for the calling thread; also pins the
  // thread to the next CPU of spec.cpus, if any.
  ThreadStats* AddThread();
  // Counts the I/O if it completed inside the window; returns whether to issue another.
  bool Complete(ThreadStats& stats, int64_t submitted_nanos, int64_t completed_nanos,
                uint64_t bytes) {
    const int64_t end = end_nanos_.load(std::memory_order_relaxed);
    if (completed_nanos >= measure_start_nanos_ && completed_nanos < end) {
      stats.latency.Record(static_cast<uint64_t>(completed_nanos - submitted_nanos));
      stats.ios.store(stats.ios.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      stats.bytes += bytes;
      if (size_limit_ != 0) CountBytes(bytes, completed_nanos);
    }
    return completed_nanos < end;
  }
  // Ends the run with `status` (the first failure wins) and wakes the main thread.
  void Fail(absl::Status status);
  bool failed() const { return failed_.load(std::memory_order_acquire); }

  // Main thread. Start() begins the ramp; Measure() blocks until the window is over, showing
  // the status line, and samples CPU and `counters` (may be null) at its two ends.
  void Start();
  void Measure(const std::function<EngineCounters()>& counters);
  // After the engine has drained: the first failure, or OK.
  absl::Status status() const;
  // Merges the threads' counters into a result (call after the drain).
  RunResult Result(int connections, int threads) const;

 private:
  void CountBytes(uint64_t bytes, int64_t now);
  void EndWindowAt(int64_t nanos);
  void PrintStatus(int64_t now) const;

  const RunSpec spec_;
  const EngineKind engine_;
  RunControl& control_;
  int64_t start_nanos_ = 0;
  int64_t measure_start_nanos_ = INT64_MAX;
  const uint64_t size_limit_;
  std::atomic<int64_t> end_nanos_{INT64_MAX};
  std::atomic<uint64_t> counted_bytes_{0};
  std::atomic<bool> failed_{false};

  mutable std::mutex mutex_;  // guards everything below
  std::deque<ThreadStats> threads_;
  absl::Status status_;
  double window_seconds_ = 0;
  double cpu_seconds_ = 0;
  std::optional<EngineCounters> counters_begin_;
  std::optional<EngineCounters> counters_end_;
  bool interrupted_ = false;
};

// sched_setaffinity for the calling thread: one CPU, or (for the whole process, before any
// thread starts) a set that later threads inherit.
absl::Status PinCurrentThread(const std::vector<int>& cpus);

// Zeroed memory aligned to 4096 bytes (page and O_DIRECT alignment), touched up front so
// page faults do not land in the measurement.
struct FreeDeleter {
  void operator()(uint8_t* memory) const;
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeDeleter>;
absl::StatusOr<AlignedBytes> AllocateAligned(size_t size);

}  // namespace nbdbench

#endif  // NBDRING_TOOLS_BENCH_RUN_H_
