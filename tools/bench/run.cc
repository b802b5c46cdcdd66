#include "tools/bench/run.h"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace nbdbench {
namespace {

constexpr int64_t kNanosPerSecond = 1'000'000'000;

double CpuSecondsUsed() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& value) {
    return static_cast<double>(value.tv_sec) + static_cast<double>(value.tv_usec) * 1e-6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

void ClearStatusLine() {
  std::fputs("\r\033[K", stdout);
  std::fflush(stdout);
}

}  // namespace

const char* EngineName(EngineKind engine) {
  return engine == EngineKind::kNbdring ? "nbdring" : "libnbd";
}

void RunControl::Interrupt(int signal_number) {
  int expected = 0;
  interrupt_signal_.compare_exchange_strong(expected, signal_number, std::memory_order_acq_rel);
  Wake();
}

void RunControl::Wake() {
  std::lock_guard<std::mutex> lock(mutex_);
  wakeup_.notify_all();
}

Run::Run(const RunSpec& spec, EngineKind engine, RunControl& control)
    : spec_(spec), engine_(engine), control_(control), size_limit_(spec.size_limit) {}

int64_t Run::NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

ThreadStats* Run::AddThread() {
  std::lock_guard<std::mutex> lock(mutex_);
  ThreadStats* stats = &threads_.emplace_back();
  if (!spec_.cpus.empty()) {
    // The process is already confined to spec_.cpus (main pins it before any thread starts),
    // so a failure here leaves the thread within the set: nothing to report.
    const int cpu = spec_.cpus[(threads_.size() - 1) % spec_.cpus.size()];
    (void)PinCurrentThread({cpu});
  }
  return stats;
}

void Run::CountBytes(uint64_t bytes, int64_t now) {
  const uint64_t total = counted_bytes_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  if (total >= size_limit_ && total - bytes < size_limit_) {
    // This completion is the last one counted: the window ends just after it.
    EndWindowAt(now + 1);
    control_.Wake();
  }
}

void Run::EndWindowAt(int64_t nanos) {
  int64_t end = end_nanos_.load(std::memory_order_relaxed);
  while (nanos < end && !end_nanos_.compare_exchange_weak(end, nanos, std::memory_order_relaxed)) {
  }
}

void Run::Fail(absl::Status status) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_.ok()) status_ = std::move(status);
  }
  failed_.store(true, std::memory_order_release);
  EndWindowAt(NowNanos());
  control_.Wake();
}

absl::Status Run::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

void Run::Start() {
  start_nanos_ = NowNanos();
  measure_start_nanos_ = start_nanos_ + absl::ToInt64Nanoseconds(spec_.ramp);
  if (spec_.runtime > absl::ZeroDuration()) {
    EndWindowAt(measure_start_nanos_ + absl::ToInt64Nanoseconds(spec_.runtime));
  }
}

void Run::Measure(const std::function<EngineCounters()>& counters) {
  std::unique_lock<std::mutex> lock(control_.mutex());
  int64_t next_status = start_nanos_ + kNanosPerSecond;
  bool status_shown = false;
  // Sleeps until `until`, the window's end, an interrupt or the next status line, whichever
  // is first; returns the time on waking.
  auto wait = [&](int64_t until) {
    int64_t now = NowNanos();
    if (control_.interrupted()) EndWindowAt(now);
    if (spec_.live_status && now >= next_status) {
      PrintStatus(now);
      status_shown = true;
      next_status += kNanosPerSecond;
    }
    int64_t target = std::min(until, end_nanos_.load(std::memory_order_relaxed));
    if (spec_.live_status) target = std::min(target, next_status);
    if (target > now) {
      // At most a second at a time: "no deadline" is INT64_MAX, which would overflow the
      // clock arithmetic inside wait_for.
      control_.wakeup().wait_for(
          lock, std::chrono::nanoseconds(std::min<int64_t>(target - now, kNanosPerSecond)));
    }
    return NowNanos();
  };

  int64_t now = NowNanos();
  while (now < measure_start_nanos_ && now < end_nanos_.load(std::memory_order_relaxed)) {
    now = wait(measure_start_nanos_);
  }
  if (now >= end_nanos_.load(std::memory_order_relaxed)) {
    // Ended during the ramp (interrupt or failure): nothing was measured.
    std::lock_guard<std::mutex> stats_lock(mutex_);
    interrupted_ = control_.interrupted();
    if (status_shown) ClearStatusLine();
    return;
  }
  next_status = measure_start_nanos_ + kNanosPerSecond;  // a rate over a whole second
  const int64_t sample_begin = NowNanos();
  const double cpu_begin = CpuSecondsUsed();
  std::optional<EngineCounters> begin;
  if (counters) begin = counters();

  while (now < end_nanos_.load(std::memory_order_relaxed)) now = wait(INT64_MAX);

  const double cpu_end = CpuSecondsUsed();
  const int64_t sample_end = NowNanos();
  std::optional<EngineCounters> end;
  if (counters) end = counters();
  if (status_shown) ClearStatusLine();

  std::lock_guard<std::mutex> stats_lock(mutex_);
  const int64_t window_end = end_nanos_.load(std::memory_order_relaxed);
  window_seconds_ = static_cast<double>(std::max<int64_t>(0, window_end - measure_start_nanos_)) /
                    kNanosPerSecond;
  // The samples are taken when this thread wakes, a little after the window's edges; scale
  // the CPU rate seen between them to the window itself.
  const double sampled_seconds = static_cast<double>(sample_end - sample_begin) / kNanosPerSecond;
  cpu_seconds_ = sampled_seconds > 0 ? (cpu_end - cpu_begin) / sampled_seconds * window_seconds_
                                     : cpu_end - cpu_begin;
  counters_begin_ = begin;
  counters_end_ = end;
  interrupted_ = control_.interrupted();
}

void Run::PrintStatus(int64_t now) const {
  std::string line;
  if (now < measure_start_nanos_) {
    line = absl::StrFormat("[%s] ramping up  %.0f s / %.0f s", EngineName(engine_),
                           static_cast<double>(now - start_nanos_) / kNanosPerSecond,
                           absl::ToDoubleSeconds(spec_.ramp));
  } else {
    uint64_t ios = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const ThreadStats& stats : threads_) ios += stats.ios.load(std::memory_order_relaxed);
    }
    const double elapsed = static_cast<double>(now - measure_start_nanos_) / kNanosPerSecond;
    line = absl::StrFormat("[%s] %.0f IOPS  %.0f s", EngineName(engine_),
                           elapsed > 0 ? static_cast<double>(ios) / elapsed : 0.0, elapsed);
    if (spec_.runtime > absl::ZeroDuration()) {
      absl::StrAppendFormat(&line, " / %.0f s", absl::ToDoubleSeconds(spec_.runtime));
    }
    if (size_limit_ != 0) {
      absl::StrAppendFormat(
          &line, "  %.0f / %.0f MiB",
          static_cast<double>(counted_bytes_.load(std::memory_order_relaxed)) / (1 << 20),
          static_cast<double>(size_limit_) / (1 << 20));
    }
  }
  std::fputs(absl::StrCat("\r", line, "\033[K").c_str(), stdout);
  std::fflush(stdout);
}

RunResult Run::Result(int connections, int threads) const {
  std::lock_guard<std::mutex> lock(mutex_);
  RunResult result;
  result.engine = engine_;
  result.rw = spec_.rw;
  result.block_size = spec_.block_size;
  result.iodepth = spec_.iodepth;
  result.connections = connections;
  result.threads = threads;
  for (const ThreadStats& stats : threads_) {
    result.ios += stats.ios.load(std::memory_order_relaxed);
    result.bytes += stats.bytes;
    result.latency.Merge(stats.latency);
  }
  result.seconds = window_seconds_;
  result.cpu_seconds = cpu_seconds_;
  if (counters_begin_ && counters_end_) {
    if (counters_begin_->enters && counters_end_->enters) {
      result.enters = *counters_end_->enters - *counters_begin_->enters;
    }
    if (counters_begin_->sqes && counters_end_->sqes) {
      result.sqes = *counters_end_->sqes - *counters_begin_->sqes;
    }
    const std::vector<uint64_t>& begin = counters_begin_->connection_ios;
    const std::vector<uint64_t>& end = counters_end_->connection_ios;
    if (!begin.empty() && begin.size() == end.size()) {
      for (size_t i = 0; i < begin.size(); ++i) result.connection_ios.push_back(end[i] - begin[i]);
    }
  }
  result.interrupted = interrupted_;
  return result;
}

std::optional<ConnectionSpread> SpreadOf(const RunResult& result) {
  if (result.connection_ios.empty() || result.seconds <= 0) return std::nullopt;
  std::vector<uint64_t> sorted = result.connection_ios;
  std::sort(sorted.begin(), sorted.end());
  const size_t middle = sorted.size() / 2;
  const double median = sorted.size() % 2 == 1
                            ? static_cast<double>(sorted[middle])
                            : (static_cast<double>(sorted[middle - 1]) + sorted[middle]) / 2;
  return ConnectionSpread{static_cast<double>(sorted.front()) / result.seconds,
                          median / result.seconds,
                          static_cast<double>(sorted.back()) / result.seconds};
}

absl::Status PinCurrentThread(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot pin to CPUs ", absl::StrJoin(cpus, ","),
                                                   ": sched_setaffinity: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void FreeDeleter::operator()(uint8_t* memory) const { std::free(memory); }

absl::StatusOr<AlignedBytes> AllocateAligned(size_t size) {
  constexpr size_t kAlignment = 4096;
  const size_t rounded = std::max(kAlignment, (size + kAlignment - 1) / kAlignment * kAlignment);
  AlignedBytes memory(static_cast<uint8_t*>(std::aligned_alloc(kAlignment, rounded)));
  if (memory == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", rounded, " bytes of I/O buffers"));
  }
  std::memset(memory.get(), 0, rounded);
  return memory;
}

}  // namespace nbdbench
