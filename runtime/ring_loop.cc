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

absl::StatusOr<std::unique_ptr<RingLoop>> RingLoop::Create(const RingOptions& options) {
  std::unique_ptr<RingLoop> loop(new RingLoop());
  loop->options_ = options;
  loop->batch_window_ = BatchWindow(options.batch_delay_ns);
  loop->thread_id_ = std::this_thread::get_id();
  int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  loop->wakeup_fd_ = FileDescriptor(fd);
  // SINGLE_ISSUER/DEFER_TASKRUN rings belong to the thread that creates them.
  auto ring = Ring::Create(options.entries, options.notify_fd, options.receive_buffers);
  if (!ring.ok()) return ring.status();
  loop->ring_ = *std::move(ring);
  loop->wakeup_completion_.handler = &RingLoop::OnWakeup;
  loop->wakeup_completion_.owner = loop.get();
  loop->ArmWakeup();
  return loop;
}

RingLoop::~RingLoop() {
  for (CancelMessage* message = cancels_.exchange(nullptr); message != nullptr;) {
    CancelMessage* next = message->next;
    delete message;
    message = next;
  }
  // Every group is finished by now (its connections closed, their SQEs done) and the wakeup
  // read is the only SQE left; the ring's teardown cancels it while this object (and
  // wakeup_value_) still exists.
  ring_.reset();
}

void RingLoop::Attach(ConnectionGroup* group) {
  ConnectionGroup* head = attached_.load(std::memory_order_relaxed);
  do {
    group->next_attached = head;
  } while (!attached_.compare_exchange_weak(head, group, std::memory_order_release,
                                            std::memory_order_relaxed));
  if (on_this_thread() && !in_turn_) {
    AdoptAttached();  // caller-driven, between polls: the caller's thread is the loop's
  } else {
    Wake();
  }
}

void RingLoop::AdoptAttached() {
  ConnectionGroup* stack = attached_.exchange(nullptr, std::memory_order_acquire);
  std::vector<ConnectionGroup*> arrived;
  for (; stack != nullptr; stack = stack->next_attached) arrived.push_back(stack);
  if (arrived.empty()) return;
  for (auto it = arrived.rbegin(); it != arrived.rend(); ++it) {  // oldest first
    ConnectionGroup* group = *it;
    group->adopted = true;
    groups_.push_back(group);
    for (const std::unique_ptr<Connection>& connection : group->connections) connection->Start();
    if (group->request_timeout_ns > 0) {
      // Check timeouts often enough for the strictest group, at most every millisecond.
      const int64_t interval = std::max<int64_t>(group->request_timeout_ns / 8, 1000000);
      if (timeout_check_ns_ == 0 || interval < timeout_check_ns_) timeout_check_ns_ = interval;
    }
    if (closing_) group->detach_requested.store(true, std::memory_order_relaxed);
  }
  if (closing_) detach_requests_.fetch_add(1, std::memory_order_relaxed);
  RebuildConnectionList();
}

void RingLoop::RebuildConnectionList() {
  connections_.clear();
  for (ConnectionGroup* group : groups_) {
    for (const std::unique_ptr<Connection>& connection : group->connections) {
      connections_.push_back(connection.get());
    }
  }
}

void RingLoop::Detach(ConnectionGroup* group) {
  group->detach_requested.store(true, std::memory_order_release);
  detach_requests_.fetch_add(1, std::memory_order_release);
  if (!on_this_thread()) Wake();  // on this thread the next turn sees it
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
    for (Connection* connection : connections_) connection->Flush();
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
      detach_requests_.load(std::memory_order_acquire) != detaches_seen_ ||
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
    for (Connection* connection : connections_) {
      if (connection->Cancel(message->operation, message->submission)) break;
    }
    CancelMessage* next = message->next;
    delete message;
    message = next;
  }
}

void RingLoop::RequestClose() {
  if (close_requested_.exchange(true)) return;
  Wake();
}

void RingLoop::ArmWakeup() {
  io_uring_sqe* sqe = ring_->Prepare(&wakeup_completion_);
  io_uring_prep_read(sqe, wakeup_fd_.get(), &wakeup_value_, sizeof(wakeup_value_), 0);
}

void RingLoop::OnWakeup(IoCompletion* completion) {
  auto* self = static_cast<RingLoop*>(completion->owner);
  self->ArmWakeup();  // the inbox itself is drained at the top of every turn
}

void RingLoop::FailLocally(Operation* operation, absl::Status status) {
  if (!status.ok()) StateOf(operation).first_error = std::move(status);
  if (ConnectionGroup* group = StateOf(operation).group; group != nullptr) {
    ++group->local_failures;
  }
  local_failures_.PushBack(operation);
}

void RingLoop::Dispatch(Operation* operation) {
  dispatched_since_flush_ = true;
  ConnectionGroup* group = StateOf(operation).group;
  if (!group->adopted) AdoptAttached();  // attached just before this operation was pushed
  if (!StateOf(operation).first_error.ok()) {
    // Refused by validation: completed on the next turn, never inside Submit.
    FailLocally(operation, absl::OkStatus());
    return;
  }
  if (group->closing) {
    FailLocally(operation, absl::UnavailableError("the client is closed"));
    return;
  }
  // The least loaded connection of the group; among equals, the search starts one further
  // each time, so ties do not always go to the first connections (at hundreds of connections
  // that bias left the last ones starved).
  Connection* best = nullptr;
  const size_t count = group->connections.size();
  const size_t start = count > 0 ? group->dispatch_start++ % count : 0;
  for (size_t i = 0; i < count; ++i) {
    Connection* connection = group->connections[(start + i) % count].get();
    if (!connection->usable()) continue;
    if (best == nullptr || connection->outstanding_bytes() < best->outstanding_bytes()) {
      best = connection;
    }
  }
  if (best == nullptr) {
    // No open connection: wait on one that is reconnecting or about to (bounded by its
    // reconnect delay).
    for (const std::unique_ptr<Connection>& connection : group->connections) {
      if (connection->will_reopen()) {
        connection->Enqueue(operation);
        return;
      }
    }
    absl::Status last = group->connections.empty() ? absl::UnavailableError("no connection")
                                                   : group->connections.front()->failure();
    FailLocally(operation, absl::UnavailableError(absl::StrCat(
                               "no open connection to the server (", last.message(), ")")));
    return;
  }
  best->Enqueue(operation);
}

void RingLoop::AbandonConnections(ConnectionGroup* group) {
  group->abandoned = true;
  for (const std::unique_ptr<Connection>& connection : group->connections) {
    if (connection->state() == Connection::State::kClosed) continue;
    connection->Fail(absl::UnavailableError(absl::StrCat(
        "the client closed and the server did not finish within the close timeout (",
        group->close_timeout_ns / 1000000, " ms)")));
  }
}

bool RingLoop::ProgressDetaches() {
  const uint32_t requests = detach_requests_.load(std::memory_order_acquire);
  if (requests != detaches_seen_) {
    detaches_seen_ = requests;
    // A group attached and detached in quick succession: the acquire above made its attach
    // visible even if the relaxed look at the top of the turn missed it.
    if (attached_.load(std::memory_order_acquire) != nullptr) AdoptAttached();
    bool newly_closing = false;
    for (ConnectionGroup* group : groups_) {
      if (group->closing || !group->detach_requested.load(std::memory_order_acquire)) continue;
      group->closing = true;
      group->close_deadline_ns = DeadlineAfter(MonotonicNanoseconds(), group->close_timeout_ns);
      ++closing_groups_;
      newly_closing = true;
      for (const std::unique_ptr<Connection>& connection : group->connections) {
        connection->StopReconnecting();
      }
    }
    if (newly_closing) {
      // What the client submitted before it asked to detach is visible now (its pushes came
      // before the request): it is dispatched to the group and drains with it.
      OperationQueue arrived = inbox_.TakeAll();
      while (Operation* operation = arrived.PopFront()) Dispatch(operation);
    }
  }
  if (closing_groups_ == 0) return false;
  bool finished_any = false;
  const int64_t now = MonotonicNanoseconds();
  for (ConnectionGroup*& group : groups_) {
    if (!group->closing) continue;
    if (!group->abandoned && now >= group->close_deadline_ns) AbandonConnections(group);
    bool idle = group->local_failures == 0;
    bool closed = group->local_failures == 0;
    for (const std::unique_ptr<Connection>& connection : group->connections) {
      idle = idle && (connection->idle() || connection->state() != Connection::State::kOpen);
      closed = closed && connection->quiescent();
    }
    if (!closed) {
      // Disconnect only changes state (the NBD_CMD_DISC goes out with this turn's flush), so
      // a group it applies to finishes on a later turn.
      if (idle) {
        for (const std::unique_ptr<Connection>& connection : group->connections) {
          connection->Disconnect();
        }
      }
      continue;
    }
    --closing_groups_;
    ConnectionGroup* done = group;
    group = nullptr;  // let go of it before marking it finished: its owner may free it then
    finished_any = true;
    done->MarkFinished();
  }
  if (finished_any) {
    groups_.erase(std::remove(groups_.begin(), groups_.end(), nullptr), groups_.end());
    RebuildConnectionList();
  }
  return finished_any;
}

bool RingLoop::RunTurn(int64_t max_wait_ns) {
  if (attached_.load(std::memory_order_relaxed) != nullptr) AdoptAttached();
  if (!closing_ && close_requested_.load(std::memory_order_acquire)) {
    closing_ = true;  // every group attached now or later is detached
    for (ConnectionGroup* group : groups_) {
      group->detach_requested.store(true, std::memory_order_relaxed);
    }
    detach_requests_.fetch_add(1, std::memory_order_relaxed);
  }
  OperationQueue arrived = inbox_.TakeAll();
  while (Operation* operation = arrived.PopFront()) Dispatch(operation);
  if (cancels_.load(std::memory_order_relaxed) != nullptr) ProcessCancels();
  // Failures the callbacks below cause wait for the next turn: a callback that resubmits on
  // every error would otherwise keep this loop going, and every other client of the ring
  // waiting, for as long as it likes.
  OperationQueue failed;
  failed.Append(local_failures_);
  while (Operation* operation = failed.PopFront()) {
    if (ConnectionGroup* group = StateOf(operation).group; group != nullptr) {
      --group->local_failures;
    }
    StateOf(operation).fully_staged = true;
    StateOf(operation).parts_outstanding = 1;
    absl::Status status = StateOf(operation).first_error;
    CompleteOperationPart(operation, status, nullptr);  // its callback may dispatch more
  }
  for (Connection* connection : connections_) connection->PollReconnect();
  // Whoever waits for a group that just finished (a caller-driven Close turning this loop)
  // must not wait out a whole turn for nothing.
  if (ProgressDetaches()) max_wait_ns = 0;
  if (closing_ && groups_.empty() && attached_.load(std::memory_order_acquire) == nullptr &&
      inbox_.empty() && local_failures_.empty()) {
    return false;
  }
  unsigned inline_sends = 0;
  for (Connection* connection : connections_) {
    connection->Flush();
    inline_sends += connection->TakeInlineSend() ? 1 : 0;
  }
  dispatched_since_flush_ = false;
  // Failures are waiting for the next turn: reap what is there without sleeping.
  if (!local_failures_.empty()) max_wait_ns = 0;

  int64_t wait_ns = -1;
  const int64_t now = timeout_check_ns_ > 0 || batch_window_.enabled() || closing_groups_ > 0
                          ? MonotonicNanoseconds()
                          : 0;
  if (timeout_check_ns_ > 0) {
    if (now >= next_timeout_check_ns_) {
      for (Connection* connection : connections_) connection->CheckTimeouts(now);
      next_timeout_check_ns_ = now + timeout_check_ns_;
    }
    wait_ns = next_timeout_check_ns_ - now;
  }
  for (const ConnectionGroup* group : groups_) {
    if (!group->closing || group->abandoned) continue;
    // Wake up at the close deadline even if the server stays silent.
    const int64_t until_deadline = std::max<int64_t>(group->close_deadline_ns - now, 0);
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
  for (const Connection* connection : connections_) {
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

}  // namespace nbdring
