#include "tools/bench/nbdring_engine.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <thread>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nbdring/client.h"
#include "tools/bench/workload.h"

namespace nbdbench {
namespace {

// Prefill and read-back move data in chunks this large (or the export's maximum payload, if
// smaller), several in flight per connection.
constexpr uint64_t kSweepChunkBytes = 4 << 20;
constexpr int kSweepDepthPerConnection = 4;
constexpr size_t kBufferAlignment = 4096;

size_t RoundUpToAlignment(uint64_t bytes) {
  return static_cast<size_t>((bytes + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment);
}

const char* RequestVerb(nbd::Command command) {
  return command == nbd::Command::kRead ? "read" : "write";
}

absl::Status Annotate(const absl::Status& status, const nbdring::Operation& operation) {
  return absl::Status(status.code(), absl::StrCat(RequestVerb(operation.command), " of ",
                                                  operation.length, " bytes at offset ",
                                                  operation.offset, " failed: ", status.message()));
}

absl::StatusOr<std::unique_ptr<nbdring::Client>> ConnectClient(
    const nbdring::ClientOptions& options) {
  absl::StatusOr<std::unique_ptr<nbdring::Client>> client = nbdring::Client::Connect(options);
  if (!client.ok()) {
    return absl::Status(
        client.status().code(),
        absl::StrCat("nbdring: cannot connect to ", options.uri, ": ", client.status().message()));
  }
  return client;
}

// Caller-driven mode (--polled): a thread of the benchmark's — not the library's — connects a
// threads = 0 client, which makes it the ring's owner, and turns it with Poll until Stop().
class PollingThread {
 public:
  ~PollingThread() { Stop(); }

  absl::StatusOr<std::unique_ptr<nbdring::Client>> Start(nbdring::ClientOptions options) {
    options.threads = 0;
    std::promise<absl::StatusOr<nbdring::Client*>> connected;
    std::future<absl::StatusOr<nbdring::Client*>> result = connected.get_future();
    thread_ = std::thread([this, options, &connected] {
      absl::StatusOr<std::unique_ptr<nbdring::Client>> client = ConnectClient(options);
      if (!client.ok()) {
        connected.set_value(client.status());
        return;
      }
      nbdring::Client* polled = client->release();
      connected.set_value(polled);
      // Until Stop(): the 10 ms bound only matters once nothing is in flight.
      while (!stop_.load(std::memory_order_acquire)) {
        absl::Status status = polled->Poll(absl::Milliseconds(10));
        if (!status.ok()) break;
      }
      polled->Close().IgnoreError();  // on the owner thread, as caller-driven mode needs
    });
    absl::StatusOr<nbdring::Client*> client = result.get();
    if (!client.ok()) {
      thread_.join();
      return client.status();
    }
    return std::unique_ptr<nbdring::Client>(*client);
  }

  // Closes the client on its thread and joins; the client may be destroyed after this.
  void Stop() {
    stop_.store(true, std::memory_order_release);
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

class NbdringBench;

// One request kept in flight for the whole run. Cache-line aligned: neighbouring slots may
// complete on different ring threads.
struct alignas(64) Slot {
  nbdring::Operation operation;
  NbdringBench* bench = nullptr;
  nbdring::Client* client = nullptr;
  int64_t submitted_nanos = 0;
  SplitMix64 random;
  int stream = 0;
};

// A sequential stream's position, on its own cache line: streams may be advanced by
// different ring threads.
struct alignas(64) StreamCursor {
  std::atomic<uint64_t> steps{0};
};

// Which run's ThreadStats the calling ring thread records into. Ring threads are the
// library's, so the benchmark learns about them on their first callback.
struct ThreadBinding {
  uint64_t run_id = 0;
  ThreadStats* stats = nullptr;
};
thread_local ThreadBinding current_thread;
std::atomic<uint64_t> next_run_id{1};

class NbdringBench {
 public:
  NbdringBench(const RunSpec& spec, const BlockRange& blocks, RunControl& control)
      : spec_(spec),
        blocks_(blocks),
        run_(spec, EngineKind::kNbdring, control),
        run_id_(next_run_id.fetch_add(1)) {}

  absl::StatusOr<RunResult> Execute();

 private:
  static void OnComplete(nbdring::Operation* operation, const absl::Status& status);
  void Issue(Slot& slot);
  void Retire();
  ThreadStats& StatsOfThisThread() {
    if (current_thread.run_id != run_id_) current_thread = {run_id_, run_.AddThread()};
    return *current_thread.stats;
  }

  const RunSpec& spec_;
  const BlockRange blocks_;
  Run run_;
  const uint64_t run_id_;
  int streams_ = 1;
  std::unique_ptr<StreamCursor[]> cursors_;
  AlignedBytes buffers_;
  std::unique_ptr<Slot[]> slots_;
  int slot_count_ = 0;

  std::mutex drain_mutex_;
  std::condition_variable drained_;
  int outstanding_ = 0;  // slots not yet retired

  // Stats over every client; the ring counters once per ring.
  nbdring::ClientStats SumStats() const;

  // Last, so they are destroyed first: the clients' destructors (or the polling thread's
  // Close) drain requests whose callbacks use the slots and the drain counter above.
  std::shared_ptr<nbdring::Runtime> runtime_;  // --clients > 1: the rings they share
  std::vector<std::unique_ptr<nbdring::Client>> clients_;
  PollingThread polling_;
};

nbdring::ClientStats NbdringBench::SumStats() const {
  nbdring::ClientStats sum;
  for (const std::unique_ptr<nbdring::Client>& client : clients_) {
    const nbdring::ClientStats one = client->stats();
    sum.requests += one.requests;
    sum.enters += one.enters;
    sum.sqes += one.sqes;
    sum.inflight_limit += one.inflight_limit;
    for (int i = 0; i < nbdring::LatencyHistogram::kBucketCount; ++i) {
      sum.wire_latency.Add(i, one.wire_latency.bucket_count(i), 0);
    }
  }
  if (runtime_ != nullptr) {
    const nbdring::RuntimeStats rings = runtime_->stats();
    sum.enters = rings.enters;
    sum.sqes = rings.sqes;
  }
  return sum;
}

void NbdringBench::Issue(Slot& slot) {
  bool read = false;
  switch (spec_.rw) {
    case ReadWrite::kRandRead:
    case ReadWrite::kRead:
      read = true;
      break;
    case ReadWrite::kRandWrite:
    case ReadWrite::kWrite:
      read = false;
      break;
    case ReadWrite::kRandRw:
      read = slot.random.Below(100) < static_cast<uint64_t>(spec_.read_percent);
      break;
  }
  const uint64_t offset =
      IsRandom(spec_.rw) ? blocks_.RandomOffset(slot.random)
                         : blocks_.StreamOffset(
                               slot.stream, streams_,
                               cursors_[slot.stream].steps.fetch_add(1, std::memory_order_relaxed));
  nbdring::Operation& operation = slot.operation;
  operation.command = read ? nbd::Command::kRead : nbd::Command::kWrite;
  operation.offset = offset;
  if (!read && spec_.verify) {
    FillPattern(offset, static_cast<uint8_t*>(operation.buffer), operation.length);
  }
  slot.submitted_nanos = Run::NowNanos();
  slot.client->Submit(&operation);
}

void NbdringBench::OnComplete(nbdring::Operation* operation, const absl::Status& status) {
  const int64_t now = Run::NowNanos();
  Slot& slot = *static_cast<Slot*>(operation->user_data);
  NbdringBench& bench = *slot.bench;
  if (!status.ok()) {
    bench.run_.Fail(Annotate(status, *operation));
    bench.Retire();
    return;
  }
  if (bench.spec_.verify && operation->command == nbd::Command::kRead) {
    absl::Status check = CheckPatternData(
        operation->offset, static_cast<const uint8_t*>(operation->buffer), operation->length);
    if (!check.ok()) {
      bench.run_.Fail(std::move(check));
      bench.Retire();
      return;
    }
  }
  if (bench.run_.Complete(bench.StatsOfThisThread(), slot.submitted_nanos, now,
                          operation->length)) {
    bench.Issue(slot);
  } else {
    bench.Retire();
  }
}

void NbdringBench::Retire() {
  std::lock_guard<std::mutex> lock(drain_mutex_);
  if (--outstanding_ == 0) drained_.notify_all();
}

absl::StatusOr<RunResult> NbdringBench::Execute() {
  nbdring::ClientOptions options;
  options.uri = spec_.uri;
  options.connections = spec_.connections;
  options.threads = spec_.threads;
  options.inflight_limit = static_cast<uint32_t>(
      spec_.inflight_limit < 0 ? spec_.iodepth : spec_.inflight_limit);
  options.completion_batch_delay = spec_.batch_delay;
  if (spec_.clients > 1) {
    nbdring::RuntimeOptions runtime_options;
    runtime_options.threads = spec_.threads;
    runtime_options.completion_batch_delay = spec_.batch_delay;
    absl::StatusOr<std::shared_ptr<nbdring::Runtime>> runtime =
        nbdring::Runtime::Create(runtime_options);
    if (!runtime.ok()) return runtime.status();
    runtime_ = *std::move(runtime);
    options.runtime = runtime_;
  }
  for (int c = 0; c < spec_.clients; ++c) {
    absl::StatusOr<std::unique_ptr<nbdring::Client>> client =
        spec_.polled ? polling_.Start(options) : ConnectClient(options);
    if (!client.ok()) return client.status();
    clients_.push_back(*std::move(client));
  }

  // Each client's connections carry iodepth requests each.
  int connections = 0;
  for (const std::unique_ptr<nbdring::Client>& client : clients_) {
    connections += std::max(1, client->connections());
  }
  streams_ = connections;
  cursors_ = std::make_unique<StreamCursor[]>(static_cast<size_t>(streams_));
  slot_count_ = spec_.iodepth * connections;
  const size_t stride = RoundUpToAlignment(spec_.block_size);
  absl::StatusOr<AlignedBytes> buffers = AllocateAligned(stride * static_cast<size_t>(slot_count_));
  if (!buffers.ok()) return buffers.status();
  buffers_ = *std::move(buffers);
  slots_ = std::make_unique<Slot[]>(static_cast<size_t>(slot_count_));
  size_t client_index = 0;
  int client_slots_left = spec_.iodepth * std::max(1, clients_[0]->connections());
  for (int i = 0; i < slot_count_; ++i) {
    if (client_slots_left == 0) {
      ++client_index;
      client_slots_left = spec_.iodepth * std::max(1, clients_[client_index]->connections());
    }
    --client_slots_left;
    Slot& slot = slots_[i];
    slot.bench = this;
    slot.client = clients_[client_index].get();
    slot.random = SplitMix64(SplitMix64::Mix(static_cast<uint64_t>(i) + 1));
    slot.stream = i % streams_;
    nbdring::Operation& operation = slot.operation;
    operation.buffer = buffers_.get() + static_cast<size_t>(i) * stride;
    operation.length = spec_.block_size;
    operation.offset = spec_.region_offset;
    operation.command = ReadsData(spec_.rw) ? nbd::Command::kRead : nbd::Command::kWrite;
    operation.on_complete = &NbdringBench::OnComplete;
    operation.user_data = &slot;
    // Writes without --verify send this; any non-zero data will do, so servers that detect
    // zeroes cannot take a shortcut.
    FillPattern(0, static_cast<uint8_t*>(operation.buffer), spec_.block_size);
  }
  // Let the client refuse what it would refuse on every I/O (alignment, size limits) once,
  // with its own message, before the clock starts.
  if (absl::Status valid = clients_[0]->Validate(slots_[0].operation); !valid.ok()) {
    return absl::Status(valid.code(),
                        absl::StrCat("nbdring refuses the workload's requests: ", valid.message()));
  }

  outstanding_ = slot_count_;
  run_.Start();
  for (int i = 0; i < slot_count_; ++i) Issue(slots_[i]);
  std::optional<nbdring::ClientStats> window_begin;
  std::optional<nbdring::ClientStats> window_end;
  run_.Measure([&] {
    const nbdring::ClientStats stats = SumStats();
    (window_begin ? window_end : window_begin) = stats;
    EngineCounters counters{stats.enters, stats.sqes, {}};
    for (const std::unique_ptr<nbdring::Client>& client : clients_) {
      for (const nbdring::ClientStats& connection : client->connection_stats()) {
        counters.connection_ios.push_back(connection.requests);
      }
    }
    return counters;
  });
  {
    std::unique_lock<std::mutex> lock(drain_mutex_);
    drained_.wait(lock, [this] { return outstanding_ == 0; });
  }
  RunResult result = run_.Result(
      connections, runtime_ != nullptr ? runtime_->threads() : clients_[0]->threads());
  result.notes = clients_[0]->notes();
  if (window_end) {
    result.inflight_limit = window_end->inflight_limit;
    nbdring::LatencyHistogram wire;
    for (int i = 0; i < nbdring::LatencyHistogram::kBucketCount; ++i) {
      wire.Add(i, window_end->wire_latency.bucket_count(i) -
                      window_begin->wire_latency.bucket_count(i), 0);
    }
    if (wire.count() > 0) {
      result.wire_p50_ns = wire.PercentileNs(0.5);
      result.wire_p99_ns = wire.PercentileNs(0.99);
    }
  }
  absl::Status status = run_.status();
  if (spec_.polled) polling_.Stop();  // closes the client on its owner thread
  absl::Status closed;
  for (const std::unique_ptr<nbdring::Client>& client : clients_) {
    absl::Status one = client->Close();
    if (closed.ok()) closed = one;
  }
  if (!status.ok()) return status;
  if (!closed.ok()) {
    return absl::Status(closed.code(),
                        absl::StrCat("nbdring: closing the client failed: ", closed.message()));
  }
  return result;
}

// Moves the pattern over a region with a few large requests in flight: writes it (prefill) or
// reads it back and checks every byte.
class PatternSweep {
 public:
  PatternSweep(bool write, RunControl& control) : write_(write), control_(control) {}

  absl::Status Execute(const std::string& uri, uint64_t offset, uint64_t length, int connections);

 private:
  struct SweepSlot {
    nbdring::Operation operation;
    PatternSweep* sweep = nullptr;
  };
  static void OnComplete(nbdring::Operation* operation, const absl::Status& status);

  const bool write_;
  RunControl& control_;
  std::mutex mutex_;
  std::condition_variable finished_ready_;
  std::vector<SweepSlot*> finished_;  // completed, not yet looked at by the main thread
  absl::Status first_error_;
};

void PatternSweep::OnComplete(nbdring::Operation* operation, const absl::Status& status) {
  SweepSlot& slot = *static_cast<SweepSlot*>(operation->user_data);
  PatternSweep& sweep = *slot.sweep;
  std::lock_guard<std::mutex> lock(sweep.mutex_);
  if (!status.ok() && sweep.first_error_.ok()) sweep.first_error_ = Annotate(status, *operation);
  sweep.finished_.push_back(&slot);
  sweep.finished_ready_.notify_one();
}

absl::Status PatternSweep::Execute(const std::string& uri, uint64_t offset, uint64_t length,
                                   int connections) {
  nbdring::ClientOptions options;
  options.uri = uri;
  options.connections = connections;
  options.inflight_limit = kSweepDepthPerConnection;
  absl::StatusOr<std::unique_ptr<nbdring::Client>> connected = ConnectClient(options);
  if (!connected.ok()) return connected.status();
  nbdring::Client& client = **connected;

  const nbd::BlockSizeConstraints& limits = client.export_info().block_size;
  uint64_t chunk = std::min<uint64_t>(kSweepChunkBytes, limits.maximum);
  chunk -= chunk % std::max<uint64_t>(1, limits.minimum);
  chunk = std::max<uint64_t>(chunk, std::max<uint64_t>(1, limits.minimum));
  const int depth = kSweepDepthPerConnection * std::max(1, client.connections());
  const size_t stride = RoundUpToAlignment(chunk);
  absl::StatusOr<AlignedBytes> buffers = AllocateAligned(stride * static_cast<size_t>(depth));
  if (!buffers.ok()) return buffers.status();
  std::vector<SweepSlot> slots(static_cast<size_t>(depth));
  std::vector<SweepSlot*> idle;
  finished_.reserve(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    slots[i].sweep = this;
    slots[i].operation.buffer = buffers->get() + i * stride;
    slots[i].operation.command = write_ ? nbd::Command::kWrite : nbd::Command::kRead;
    slots[i].operation.on_complete = &PatternSweep::OnComplete;
    slots[i].operation.user_data = &slots[i];
    idle.push_back(&slots[i]);
  }

  const uint64_t end = offset + length;
  uint64_t next = offset;
  int busy = 0;
  absl::Status error;
  std::vector<SweepSlot*> done;
  while (true) {
    while (!idle.empty() && next < end && error.ok() && !control_.interrupted()) {
      SweepSlot* slot = idle.back();
      idle.pop_back();
      slot->operation.offset = next;
      slot->operation.length = std::min(chunk, end - next);
      if (write_) {
        FillPattern(next, static_cast<uint8_t*>(slot->operation.buffer), slot->operation.length);
      }
      next += slot->operation.length;
      ++busy;
      client.Submit(&slot->operation);
    }
    if (busy == 0) break;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      finished_ready_.wait(lock, [this] { return !finished_.empty(); });
      done.swap(finished_);
      if (error.ok()) error = first_error_;
    }
    for (SweepSlot* slot : done) {
      --busy;
      if (!write_ && error.ok()) {
        error = CheckPatternData(slot->operation.offset,
                                 static_cast<const uint8_t*>(slot->operation.buffer),
                                 slot->operation.length);
      }
      idle.push_back(slot);
    }
    done.clear();
  }
  absl::Status closed = client.Close();
  if (!error.ok()) return error;
  if (control_.interrupted()) return absl::CancelledError("interrupted");
  return closed;
}

}  // namespace

absl::StatusOr<RunResult> RunNbdring(const RunSpec& spec, RunControl& control) {
  absl::StatusOr<BlockRange> blocks =
      BlockRange::Create(spec.region_offset, spec.region_length, spec.block_size);
  if (!blocks.ok()) return blocks.status();
  NbdringBench bench(spec, *blocks, control);
  return bench.Execute();
}

absl::Status WritePattern(const std::string& uri, uint64_t offset, uint64_t length, int connections,
                          RunControl& control) {
  PatternSweep sweep(/*write=*/true, control);
  return sweep.Execute(uri, offset, length, connections);
}

absl::Status CheckPattern(const std::string& uri, uint64_t offset, uint64_t length, int connections,
                          RunControl& control) {
  PatternSweep sweep(/*write=*/false, control);
  return sweep.Execute(uri, offset, length, connections);
}

}  // namespace nbdbench
