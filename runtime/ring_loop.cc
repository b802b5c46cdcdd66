#include "runtime/ring_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "runtime/clock.h"
#include "runtime/operation_state.h"

namespace nbdring {
namespace {

// Busy connections from which a ring always batches completions (see RunTurn()).
constexpr unsigned kFairConnections = 16;

// How long a wait that counts on inline sends may last before the loop looks again.
constexpr int64_t kInlineSendWaitCapNs = 1'000'000;

}  // namespace

absl::StatusOr<std::unique_ptr<RingLoop>> RingLoop::Create(
    const nbd::ExportInfo& info, std::vector<PendingConnection>* pending,
    const RingOptions& options) {
  std::unique_ptr<RingLoop> loop(new RingLoop());
  loop->options_ = options;
  loop->batch_window_ = BatchWindow(options.batch_delay_ns);
  loop->thread_id_ = std::this_thread::get_id();
  int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  loop->wakeup_fd_ = FileDescriptor(fd);
  // SINGLE_ISSUER/DEFER_TASKRUN rings belong to the thread that creates them.
  unsigned entries = 16;
  while (entries < 4 * pending->size() + 8) entries *= 2;
  auto ring = Ring::Create(entries, options.notify_fd);
  if (!ring.ok()) return ring.status();
  loop->ring_ = *std::move(ring);
  RingLoop* self = loop.get();
  for (PendingConnection& connection : *pending) {
    if (connection.options.reconnect) connection.options.wake_ring = [self] { self->Wake(); };
    connection.options.latency = &loop->latency_;
    loop->connections_.push_back(std::make_unique<Connection>(
        loop->ring_.get(), std::move(connection.fd), std::move(connection.tls), connection.info,
        info.meta_contexts, std::move(connection.options)));
    loop->connections_.back()->Start();
  }
  loop->wakeup_completion_.handler = &RingLoop::OnWakeup;
  loop->wakeup_completion_.owner = self;
  loop->ArmWakeup();
  return loop;
}

RingLoop::~RingLoop() {
  for (CancelMessage* message = cancels_.exchange(nullptr); message != nullptr;) {
    CancelMessage* next = message->next;
    delete message;
    message = next;
  }
  // Every connection is closed by now and the wakeup read is the only SQE left; the ring's
  // teardown cancels it while this object (and wakeup_value_) still exists.
  connections_.clear();
  ring_.reset();
}

int RingLoop::EnableNotifyFd() {
  if (ring_->notify_fd() < 0) return -1;
  if (!notify_enabled_) {
    notify_enabled_ = true;
    ring_->SetNotify(true);
    NotifyIfWorkLeft();  // work queued before anyone watched the fd
  }
  return ring_->notify_fd();
}

bool RingLoop::Turn(int64_t max_wait_ns) {
  if (finished_) return false;
  in_turn_ = true;
  if (notify_enabled_) {
    // Off for the turn: its own completions must not wake the caller afterwards. Anything
    // that arrived before is handled by this turn, so the fd's count can go.
    ring_->SetNotify(false);
    ring_->DrainNotify();
    notify_signalled_ = false;
  }
  const bool running = RunTurn(max_wait_ns);
  if (running && notify_enabled_) {
    // The caller sleeps in its own poll next, not in this ring: what the callbacks submitted
    // and the receives they re-armed must reach the kernel now, or no reply can wake it.
    for (const std::unique_ptr<Connection>& connection : connections_) connection->Flush();
    dispatched_since_flush_ = false;
    ring_->Submit();
  }
  in_turn_ = false;
  if (!running) finished_ = true;
  if (notify_enabled_) {
    ring_->SetNotify(true);
    if (running) NotifyIfWorkLeft();
  }
  return running;
}

void RingLoop::NotifyIfWorkLeft() {
  if (notify_signalled_) return;
  // The ring's own check comes after notifications were switched back on (SetNotify orders
  // that store before these loads): an event after it signals the fd itself, one before it is
  // seen here.
  if (dispatched_since_flush_ || !local_failures_.empty() || ring_->pending_sqes() > 0 ||
      cancels_.load(std::memory_order_acquire) != nullptr || ring_->HasPendingWork()) {
    ring_->SignalNotify();
    notify_signalled_ = true;
  }
}

void RingLoop::Submit(Operation* operation) {
  if (on_this_thread()) {
    // From a callback (inside a turn) or, in caller-driven mode, from the caller between
    // polls: either way no other thread touches the connections now.
    Dispatch(operation);
    if (!in_turn_ && notify_enabled_) NotifyIfWorkLeft();
    return;
  }
  if (inbox_.Push(operation)) Wake();
}

void RingLoop::Wake() {
  wakeups_.fetch_add(1, std::memory_order_relaxed);
  uint64_t one = 1;
  // A failed write can only mean the counter is saturated, which already wakes the ring.
  [[maybe_unused]] ssize_t written = write(wakeup_fd_.get(), &one, sizeof(one));
}

void RingLoop::Cancel(Operation* operation, uint64_t submission) {
  auto* message = new CancelMessage{operation, submission, nullptr};
  CancelMessage* head = cancels_.load(std::memory_order_relaxed);
  do {
    message->next = head;
  } while (!cancels_.compare_exchange_weak(head, message, std::memory_order_release,
                                           std::memory_order_relaxed));
  // Even on the ring's own thread: the loop handles it next turn, never inside a callback.
  if (!on_this_thread()) {
    Wake();
  } else if (!in_turn_ && notify_enabled_) {
    NotifyIfWorkLeft();
  }
}

void RingLoop::ProcessCancels() {
  CancelMessage* message = cancels_.exchange(nullptr, std::memory_order_acquire);
  // An Operation submitted before its cancel may have reached the inbox after this turn
  // took it; dispatch it now so the cancel finds it.
  OperationQueue arrived = inbox_.TakeAll();
  while (Operation* operation = arrived.PopFront()) Dispatch(operation);
  while (message != nullptr) {
    for (const std::unique_ptr<Connection>& connection : connections_) {
      if (connection->Cancel(message->operation, message->submission)) break;
    }
    CancelMessage* next = message->next;
    delete message;
    message = next;
  }
}

void RingLoop::RequestClose() {
  if (close_requested_.exchange(true)) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t written = write(wakeup_fd_.get(), &one, sizeof(one));
}

void RingLoop::ArmWakeup() {
  io_uring_sqe* sqe = ring_->Prepare(&wakeup_completion_);
  io_uring_prep_read(sqe, wakeup_fd_.get(), &wakeup_value_, sizeof(wakeup_value_), 0);
}

void RingLoop::OnWakeup(IoCompletion* completion) {
  auto* self = static_cast<RingLoop*>(completion->owner);
  self->ArmWakeup();  // the inbox itself is drained at the top of every turn
}

void RingLoop::Dispatch(Operation* operation) {
  dispatched_since_flush_ = true;
  if (!StateOf(operation).first_error.ok()) {
    // Refused by validation: completed on the next turn, never inside Submit.
    local_failures_.PushBack(operation);
    return;
  }
  if (closing_) {
    StateOf(operation).first_error = absl::UnavailableError("the client is closed");
    local_failures_.PushBack(operation);
    return;
  }
  // The least loaded connection; among equals, the search starts one further each time, so
  // ties do not always go to the first connections (at hundreds of connections that bias
  // left the last ones starved).
  Connection* best = nullptr;
  const size_t count = connections_.size();
  const size_t start = count > 0 ? dispatch_start_++ % count : 0;
  for (size_t i = 0; i < count; ++i) {
    Connection* connection = connections_[(start + i) % count].get();
    if (!connection->usable()) continue;
    if (best == nullptr || connection->outstanding_bytes() < best->outstanding_bytes()) {
      best = connection;
    }
  }
  if (best == nullptr) {
    // No open connection: wait on one that is reconnecting or about to (bounded by its
    // reconnect delay).
    for (const std::unique_ptr<Connection>& connection : connections_) {
      if (connection->will_reopen()) {
        connection->Enqueue(operation);
        return;
      }
    }
    absl::Status last = connections_.empty() ? absl::UnavailableError("no connection")
                                             : connections_.front()->failure();
    StateOf(operation).first_error = absl::UnavailableError(
        absl::StrCat("no open connection to the server (", last.message(), ")"));
    local_failures_.PushBack(operation);
    return;
  }
  best->Enqueue(operation);
}

void RingLoop::AbandonConnections() {
  abandoned_ = true;
  for (const std::unique_ptr<Connection>& connection : connections_) {
    if (connection->state() == Connection::State::kClosed) continue;
    connection->Fail(absl::UnavailableError(absl::StrCat(
        "the client closed and the server did not finish within the close timeout (",
        options_.close_timeout_ns / 1000000, " ms)")));
  }
}

bool RingLoop::AllClosed() const {
  for (const std::unique_ptr<Connection>& connection : connections_) {
    if (connection->state() != Connection::State::kClosed) return false;
  }
  return true;
}

bool RingLoop::RunTurn(int64_t max_wait_ns) {
  OperationQueue arrived = inbox_.TakeAll();
  while (Operation* operation = arrived.PopFront()) Dispatch(operation);
  if (cancels_.load(std::memory_order_relaxed) != nullptr) ProcessCancels();
  while (Operation* operation = local_failures_.PopFront()) {
    StateOf(operation).fully_staged = true;
    StateOf(operation).parts_outstanding = 1;
    absl::Status status = StateOf(operation).first_error;
    CompleteOperationPart(operation, status, nullptr);  // its callback may dispatch more
  }
  for (const std::unique_ptr<Connection>& connection : connections_) {
    connection->PollReconnect();
  }
  if (!closing_ && close_requested_.load(std::memory_order_acquire)) {
    closing_ = true;
    close_deadline_ns_ = DeadlineAfter(MonotonicNanoseconds(), options_.close_timeout_ns);
    for (const std::unique_ptr<Connection>& connection : connections_) {
      connection->StopReconnecting();
    }
  }
  if (closing_) {
    if (!abandoned_ && MonotonicNanoseconds() >= close_deadline_ns_) AbandonConnections();
    bool idle = inbox_.empty() && local_failures_.empty();
    for (const std::unique_ptr<Connection>& connection : connections_) {
      idle = idle && (connection->idle() || connection->state() != Connection::State::kOpen);
    }
    if (idle) {
      for (const std::unique_ptr<Connection>& connection : connections_) connection->Disconnect();
    }
    if (AllClosed() && inbox_.empty() && local_failures_.empty()) return false;
  }
  unsigned inline_sends = 0;
  for (const std::unique_ptr<Connection>& connection : connections_) {
    connection->Flush();
    inline_sends += connection->TakeInlineSend() ? 1 : 0;
  }
  dispatched_since_flush_ = false;
  if (!local_failures_.empty()) return true;

  int64_t wait_ns = -1;
  const int64_t now = options_.timeout_check_ns > 0 || batch_window_.enabled() || closing_
                          ? MonotonicNanoseconds()
                          : 0;
  if (options_.timeout_check_ns > 0) {
    if (now >= next_timeout_check_ns_) {
      for (const std::unique_ptr<Connection>& connection : connections_) {
        connection->CheckTimeouts(now);
      }
      next_timeout_check_ns_ = now + options_.timeout_check_ns;
    }
    wait_ns = next_timeout_check_ns_ - now;
  }
  if (closing_ && !abandoned_) {
    // Wake up at the close deadline even if the server stays silent.
    const int64_t until_deadline = std::max<int64_t>(close_deadline_ns_ - now, 0);
    if (wait_ns < 0 || wait_ns > until_deadline) wait_ns = until_deadline;
  }
  // Completion batching: with many requests in flight the server has work queued, so
  // reacting a few microseconds later costs it little, while letting replies pile up turns
  // many wakeups (one io_uring_enter and a context switch each) into one. BatchWindow
  // sizes the wait.
  unsigned wait_count = 1;
  int64_t min_wait_ns = 0;  // > 0: batching in the kernel (Ring::min_wait)
  uint32_t in_flight = 0;
  unsigned sends = 0;
  unsigned busy_connections = 0;
  bool large_payload = false;
  uint64_t replies = 0;  // received so far; only the batching window reads it
  for (const std::unique_ptr<Connection>& connection : connections_) {
    in_flight += connection->in_flight();
    busy_connections += connection->in_flight() > 0 ? 1 : 0;
    sends += connection->send_in_flight() ? 1 : 0;
    large_payload = large_payload || connection->large_payload_in_flight();
    if (batch_window_.enabled()) {
      replies += connection->counters().wire_requests.load(std::memory_order_relaxed) -
                 connection->in_flight();
    }
  }
  if (batch_window_.enabled()) {
    batch_window_.Observe(replies, now, ThreadCpuNanoseconds);
    // After a window that ended empty, wait for the first completion instead: a second
    // empty window would only add an io_uring_enter. Large payloads are never batched:
    // see Connection::large_payload_in_flight().
    // With many connections busy the ring batches whatever the probe prefers: waking on
    // every reply answers at once the connections the server serves fastest, whose
    // threads the server's scheduler then favours, and the rest wait (256 connections
    // without batching: per-connection IOPS 3-100x apart, p99 0.2-0.5 s; batching: 1.5-1.9x,
    // p99 58-74 ms). The probe's gains there are that unfairness.
    const int64_t window_ns =
        batch_window_.WindowNs(in_flight, busy_connections >= kFairConnections);
    // With the kernel's min_wait an empty window costs nothing (it goes on sleeping until
    // the first completion); with timed waits it costs an io_uring_enter, so after one
    // the ring waits for the first completion instead.
    if (window_ns > 0 && in_flight >= options_.batch_min_in_flight &&
        (ring_->min_wait() || reaped_last_turn_ > 0) && !large_payload) {
      // Wait out the whole window: each connection yields at most one receive completion
      // per turn (plus its send), so this count is never reached and only time ends the
      // wait; replies meanwhile pile up in the socket and one recv takes them all.
      wait_count = static_cast<unsigned>(connections_.size()) + sends + 1;
      if (ring_->min_wait()) {
        min_wait_ns = window_ns;
      } else if (wait_ns < 0 || wait_ns > window_ns) {
        wait_ns = window_ns;
      }
    }
  }
  if (wait_count == 1 && inline_sends > 0 && in_flight > 0 && !large_payload) {
    // Small sends complete inside the enter that submits them; wait for those and one
    // reply in the same enter (one io_uring_enter per I/O at depth 1, not two). Capped:
    // with DEFER_TASKRUN a send that did not complete inline (a full socket buffer) is
    // resumed only by task work this very wait would have to run first.
    wait_count = 1 + inline_sends;
    if (wait_ns < 0 || wait_ns > kInlineSendWaitCapNs) wait_ns = kInlineSendWaitCapNs;
  }
  if (max_wait_ns >= 0 && (wait_ns < 0 || wait_ns > max_wait_ns)) {
    wait_ns = max_wait_ns;  // the caller's limit (Client::Poll)
    if (min_wait_ns >= max_wait_ns) min_wait_ns = 0;
  }
  if (min_wait_ns > 0) {
    ring_->SubmitAndWaitMin(wait_count, min_wait_ns, wait_ns);
  } else {
    ring_->SubmitAndWait(wait_count, wait_ns);
  }
  reaped_last_turn_ = ring_->Reap();
  return true;
}

ClientStats RingLoop::RingCounters() const {
  ClientStats stats;
  stats.wakeups = wakeups_.load(std::memory_order_relaxed);
  if (ring_ != nullptr) {
    stats.enters = ring_->counters().enters.load(std::memory_order_relaxed);
    stats.sqes = ring_->counters().sqes.load(std::memory_order_relaxed);
    stats.cqes = ring_->counters().cqes.load(std::memory_order_relaxed);
  }
  return stats;
}

void RingLoop::AddConnectionCounters(const Connection& connection, ClientStats* stats) {
  const ConnectionCounters& counters = connection.counters();
  stats->requests += counters.requests.load(std::memory_order_relaxed);
  stats->wire_requests += counters.wire_requests.load(std::memory_order_relaxed);
  stats->bytes_read += counters.bytes_read.load(std::memory_order_relaxed);
  stats->bytes_written += counters.bytes_written.load(std::memory_order_relaxed);
  stats->errors += counters.errors.load(std::memory_order_relaxed);
  stats->queue_full_waits += counters.queue_full_waits.load(std::memory_order_relaxed);
  stats->reconnects += counters.reconnects.load(std::memory_order_relaxed);
  stats->inflight_limit += connection.inflight_limit();
  connection.AddWireLatency(&stats->wire_latency);
}

void RingLoop::AppendConnectionStats(std::vector<std::pair<int, ClientStats>>* stats) const {
  const ClientStats ring = RingCounters();
  for (const std::unique_ptr<Connection>& connection : connections_) {
    ClientStats one = ring;
    AddConnectionCounters(*connection, &one);
    stats->emplace_back(connection->index(), one);
  }
}

void RingLoop::AddStats(ClientStats* stats) const {
  latency_.AddTo(stats);
  const ClientStats ring = RingCounters();
  stats->wakeups += ring.wakeups;
  stats->enters += ring.enters;
  stats->sqes += ring.sqes;
  stats->cqes += ring.cqes;
  for (const std::unique_ptr<Connection>& connection : connections_) {
    AddConnectionCounters(*connection, stats);
  }
}

}  // namespace nbdring
