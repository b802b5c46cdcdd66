#include "tools/bench/libnbd_engine.h"

#include <libnbd.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/bench/workload.h"

namespace nbdbench {
namespace {

constexpr size_t kBufferAlignment = 4096;
constexpr int kPollTimeoutMillis = 1000;

struct HandleCloser {
  void operator()(nbd_handle* handle) const { nbd_close(handle); }
};
using Handle = std::unique_ptr<nbd_handle, HandleCloser>;

absl::Status LibnbdError(absl::string_view what) {
  const char* message = nbd_get_error();
  return absl::UnavailableError(
      absl::StrCat("libnbd: ", what, ": ", message != nullptr ? message : "unknown error"));
}

class LibnbdBench;
struct Worker;

struct Connection {
  Handle handle;
  Worker* worker = nullptr;
  int stream = 0;
  uint64_t steps = 0;  // sequential workloads: I/Os issued so far; only `worker` touches it
  bool dead = false;
  std::atomic<uint64_t> completed{0};  // written by `worker`, sampled by the measuring thread
};

// Cache-line aligned like the nbdring engine's slots: neighbours may belong to other threads.
struct alignas(64) LibnbdSlot {
  Connection* connection = nullptr;
  uint8_t* buffer = nullptr;
  uint64_t offset = 0;
  bool read = true;
  int64_t submitted_nanos = 0;
  SplitMix64 random;
};

// One thread and its poll loop over the connections it owns.
struct Worker {
  LibnbdBench* bench = nullptr;
  std::vector<Connection*> connections;
  // Slots whose request completed and which are due to be issued again. Two lists, swapped
  // each turn, so completions that arrive while a turn's slots are being issued land in the
  // other one. Both are reserved to this worker's slot count: no allocation per I/O.
  std::vector<LibnbdSlot*> ready;
  std::vector<LibnbdSlot*> issuing;
  std::vector<pollfd> poll_fds;
  ThreadStats* stats = nullptr;
  int in_flight = 0;
  std::thread thread;
};

class LibnbdBench {
 public:
  LibnbdBench(const RunSpec& spec, const BlockRange& blocks, RunControl& control)
      : spec_(spec), blocks_(blocks), run_(spec, EngineKind::kLibnbd, control) {}

  absl::StatusOr<RunResult> Execute();

 private:
  absl::StatusOr<Handle> Connect();
  void Loop(Worker& worker);
  bool Issue(Worker& worker, LibnbdSlot& slot);
  static int OnComplete(void* user_data, int* error);

  const RunSpec& spec_;
  const BlockRange blocks_;
  Run run_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<LibnbdSlot> slots_;
  AlignedBytes buffers_;
  // Last, so the handles are closed first, while everything their callbacks use still exists.
  std::vector<std::unique_ptr<Connection>> connections_;
};

absl::StatusOr<Handle> LibnbdBench::Connect() {
  Handle handle(nbd_create());
  if (handle == nullptr) return LibnbdError("nbd_create");
  if (nbd_set_request_structured_replies(handle.get(), true) == -1) {
    return LibnbdError("nbd_set_request_structured_replies");
  }
  // libnbd zeroes read buffers before each read by default, a safety net for callers that
  // ignore errors; nbdring does not, and the benchmark checks every completion's error.
  if (nbd_set_pread_initialize(handle.get(), false) == -1) {
    return LibnbdError("nbd_set_pread_initialize");
  }
  // nbdring reads tls-certificates= and tls-psk-file= from a URI; so must the engine it is
  // compared with (libnbd refuses local files named in URIs unless told otherwise).
  if (nbd_set_uri_allow_local_file(handle.get(), true) == -1) {
    return LibnbdError("nbd_set_uri_allow_local_file");
  }
  if (nbd_connect_uri(handle.get(), spec_.uri.c_str()) == -1) {
    return LibnbdError(absl::StrCat("cannot connect to ", spec_.uri));
  }
  return handle;
}

bool LibnbdBench::Issue(Worker& worker, LibnbdSlot& slot) {
  Connection& connection = *slot.connection;
  switch (spec_.rw) {
    case ReadWrite::kRandRead:
    case ReadWrite::kRead:
      slot.read = true;
      break;
    case ReadWrite::kRandWrite:
    case ReadWrite::kWrite:
      slot.read = false;
      break;
    case ReadWrite::kRandRw:
      slot.read = slot.random.Below(100) < static_cast<uint64_t>(spec_.read_percent);
      break;
  }
  slot.offset = IsRandom(spec_.rw)
                    ? blocks_.RandomOffset(slot.random)
                    : blocks_.StreamOffset(connection.stream, static_cast<int>(connections_.size()),
                                           connection.steps++);
  if (!slot.read && spec_.verify) FillPattern(slot.offset, slot.buffer, spec_.block_size);
  const nbd_completion_callback completion = {
      .callback = &LibnbdBench::OnComplete, .user_data = &slot, .free = nullptr};
  slot.submitted_nanos = Run::NowNanos();
  const int64_t cookie = slot.read ? nbd_aio_pread(connection.handle.get(), slot.buffer,
                                                   spec_.block_size, slot.offset, completion, 0)
                                   : nbd_aio_pwrite(connection.handle.get(), slot.buffer,
                                                    spec_.block_size, slot.offset, completion, 0);
  if (cookie == -1) {
    run_.Fail(LibnbdError(absl::StrCat(slot.read ? "nbd_aio_pread" : "nbd_aio_pwrite", " of ",
                                       spec_.block_size, " bytes at offset ", slot.offset)));
    return false;
  }
  ++worker.in_flight;
  return true;
}

int LibnbdBench::OnComplete(void* user_data, int* error) {
  const int64_t now = Run::NowNanos();
  LibnbdSlot& slot = *static_cast<LibnbdSlot*>(user_data);
  Worker& worker = *slot.connection->worker;
  LibnbdBench& bench = *worker.bench;
  --worker.in_flight;
  slot.connection->completed.fetch_add(1, std::memory_order_relaxed);
  if (*error != 0) {
    bench.run_.Fail(absl::UnavailableError(
        absl::StrCat("libnbd: ", slot.read ? "read" : "write", " of ", bench.spec_.block_size,
                     " bytes at offset ", slot.offset, " failed: ", std::strerror(*error))));
    return 1;  // retire the command: nobody calls nbd_aio_command_completed
  }
  if (bench.spec_.verify && slot.read) {
    absl::Status check = CheckPatternData(slot.offset, slot.buffer, bench.spec_.block_size);
    if (!check.ok()) {
      bench.run_.Fail(std::move(check));
      return 1;
    }
  }
  if (bench.run_.Complete(*worker.stats, slot.submitted_nanos, now, bench.spec_.block_size)) {
    worker.ready.push_back(&slot);
  }
  return 1;
}

void LibnbdBench::Loop(Worker& worker) {
  worker.stats = run_.AddThread();
  while (true) {
    worker.issuing.swap(worker.ready);
    for (LibnbdSlot* slot : worker.issuing) {
      if (!Issue(worker, *slot)) break;
    }
    worker.issuing.clear();
    if (worker.in_flight == 0) return;

    worker.poll_fds.clear();
    bool any_alive = false;
    for (Connection* connection : worker.connections) {
      pollfd entry = {.fd = -1, .events = 0, .revents = 0};  // poll(2) skips negative fds
      if (!connection->dead) {
        entry.fd = nbd_aio_get_fd(connection->handle.get());
        const unsigned direction = nbd_aio_get_direction(connection->handle.get());
        if (direction & LIBNBD_AIO_DIRECTION_READ) entry.events |= POLLIN;
        if (direction & LIBNBD_AIO_DIRECTION_WRITE) entry.events |= POLLOUT;
        any_alive = any_alive || entry.fd >= 0;
      }
      worker.poll_fds.push_back(entry);
    }
    if (!any_alive) return;  // requests on dead handles were failed by libnbd already
    const int ready = poll(worker.poll_fds.data(), worker.poll_fds.size(), kPollTimeoutMillis);
    if (ready < 0) {
      if (errno == EINTR) continue;
      run_.Fail(absl::InternalError(absl::StrCat("libnbd engine: poll: ", std::strerror(errno))));
      return;
    }
    for (size_t i = 0; i < worker.connections.size(); ++i) {
      Connection& connection = *worker.connections[i];
      const short events = worker.poll_fds[i].revents;
      int result = 0;
      // The same dispatch as libnbd's own nbd_poll: a hang-up is a read of end-of-file.
      if (events & (POLLIN | POLLHUP)) {
        result = nbd_aio_notify_read(connection.handle.get());
      } else if (events & POLLOUT) {
        result = nbd_aio_notify_write(connection.handle.get());
      } else if (events & (POLLERR | POLLNVAL)) {
        run_.Fail(absl::UnavailableError("libnbd: server closed the socket unexpectedly"));
        connection.dead = true;
      }
      if (result == -1) {
        run_.Fail(LibnbdError("connection failed"));
        connection.dead = true;
      }
    }
  }
}

absl::StatusOr<RunResult> LibnbdBench::Execute() {
  std::vector<std::string> notes;
  // Connect everything before the clock starts. Like nbdring, open more than one connection
  // per client only when the server says that is safe; clients are independent handles.
  int per_client = spec_.connections;
  for (int i = 0; i < per_client * spec_.clients; ++i) {
    absl::StatusOr<Handle> handle = Connect();
    if (!handle.ok()) return handle.status();
    if (i == 0 && per_client > 1 && nbd_can_multi_conn(handle->get()) != 1) {
      notes.push_back(absl::StrCat(
          "libnbd: server does not advertise NBD_FLAG_CAN_MULTI_CONN: using 1 connection "
          "instead of ",
          per_client));
      per_client = 1;
    }
    connections_.push_back(std::make_unique<Connection>());
    connections_.back()->handle = *std::move(handle);
  }
  const int connection_count = static_cast<int>(connections_.size());
  const int thread_count = std::min(spec_.threads, connection_count);
  if (thread_count < spec_.threads) {
    notes.push_back(absl::StrCat("libnbd: ", spec_.threads, " threads for ", connection_count,
                                 " connection(s): using ", thread_count,
                                 " (a handle belongs to one poll loop)"));
  }
  for (int t = 0; t < thread_count; ++t) {
    workers_.push_back(std::make_unique<Worker>());
    workers_.back()->bench = this;
  }
  for (int c = 0; c < connection_count; ++c) {
    Connection& connection = *connections_[c];
    connection.stream = c;
    connection.worker = workers_[c % thread_count].get();
    connection.worker->connections.push_back(&connection);
  }

  const size_t stride =
      (spec_.block_size + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
  const int slot_count = spec_.iodepth * connection_count;
  absl::StatusOr<AlignedBytes> buffers = AllocateAligned(stride * static_cast<size_t>(slot_count));
  if (!buffers.ok()) return buffers.status();
  buffers_ = *std::move(buffers);
  slots_.resize(static_cast<size_t>(slot_count));
  for (int i = 0; i < slot_count; ++i) {
    LibnbdSlot& slot = slots_[i];
    slot.connection = connections_[i / spec_.iodepth].get();
    slot.buffer = buffers_.get() + static_cast<size_t>(i) * stride;
    slot.random = SplitMix64(SplitMix64::Mix(static_cast<uint64_t>(i) + 1));
    FillPattern(0, slot.buffer, spec_.block_size);  // see the nbdring engine: non-zero data
    slot.connection->worker->ready.push_back(&slot);
  }
  for (auto& worker : workers_) {
    worker->issuing.reserve(worker->ready.size());
    worker->ready.reserve(worker->ready.size());
    worker->poll_fds.reserve(worker->connections.size());
  }

  run_.Start();
  for (auto& worker : workers_) {
    Worker* raw = worker.get();
    worker->thread = std::thread([this, raw] { Loop(*raw); });
  }
  run_.Measure([this] {
    EngineCounters counters;
    for (const std::unique_ptr<Connection>& connection : connections_) {
      counters.connection_ios.push_back(connection->completed.load(std::memory_order_relaxed));
    }
    return counters;
  });
  for (auto& worker : workers_) worker->thread.join();

  RunResult result = run_.Result(connection_count, thread_count);
  result.notes = std::move(notes);
  absl::Status status = run_.status();
  if (!status.ok()) return status;
  for (auto& connection : connections_) {
    // Sends NBD_CMD_DISC after anything still queued; the handle is closed by its deleter.
    if (nbd_shutdown(connection->handle.get(), 0) == -1) return LibnbdError("nbd_shutdown");
  }
  return result;
}

}  // namespace

absl::StatusOr<RunResult> RunLibnbd(const RunSpec& spec, RunControl& control) {
  absl::StatusOr<BlockRange> blocks =
      BlockRange::Create(spec.region_offset, spec.region_length, spec.block_size);
  if (!blocks.ok()) return blocks.status();
  LibnbdBench bench(spec, *blocks, control);
  return bench.Execute();
}

}  // namespace nbdbench
