// runtime/connection.cc — a connection's life: set-up, meta-context ids, request timeouts,
// failure and the wait for the kernel to let go of buffers, reconnecting, cancellation and
// the orderly disconnect. Sending is in connection_send.cc, replies in connection_receive.cc.
#include "runtime/connection.h"

#include <sys/socket.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nbd/request.h"
#include "runtime/clock.h"
#include "runtime/counter.h"

namespace nbdring {

Connection::Connection(Ring* ring, FileDescriptor fd, std::unique_ptr<TlsSession> tls,
                       const nbd::ExportInfo& info,
                       std::vector<nbd::MetaContext> client_contexts, ConnectionOptions options)
    : ring_(ring),
      fd_(std::move(fd)),
      tls_(std::move(tls)),
      options_(std::move(options)),
      extended_headers_(info.extended_headers()),
      table_(options_.inflight_limit),
      admit_limit_(options_.inflight_limit),
      parser_(nbd::ReplyParserOptions{}, this),
      client_contexts_(std::move(client_contexts)) {
  if (options_.logger == nullptr) options_.logger = std::make_shared<Logger>();  // off
  counters_.latency = options_.latency;
  if (options_.adaptive_limit) {
    adaptive_ = std::make_unique<AdaptiveLimit>(options_.inflight_limit);
    admit_limit_ = adaptive_->limit();
  }
  parser_options_.mode = info.reply_mode;
  AdoptMetaContexts(info);
  // One header per slot plus NBD_CMD_DISC; a header and a payload iovec per slot.
  headers_ = std::make_unique<uint8_t[]>((options_.inflight_limit + 1) * nbd::kExtendedRequestSize);
  iovecs_.resize(2 * options_.inflight_limit + 2);
  // Every later session (after a reconnect) is TLS too: the export did not change. TLS
  // receives ciphertext, which must be opened record by record: a private buffer.
  if (tls_ != nullptr) {
    plaintext_ = std::make_unique<uint8_t[]>(kTlsPlaintextBytes);
  } else {
    shared_receive_ = ring_->receive_buffers();
  }
  send_completion_.handler = &Connection::OnSend;
  send_completion_.owner = this;
  receive_completion_.handler = &Connection::OnReceive;
  receive_completion_.owner = this;
  cancel_completion_.handler = [](IoCompletion* completion) {
    auto* self = static_cast<Connection*>(completion->owner);
    --self->kernel_operations_;
    self->MaybeFinishDying();
  };
  cancel_completion_.owner = this;
  if (options_.reconnect != nullptr) {
    reconnector_ = std::make_unique<Reconnector>(options_.reconnect, options_.wake_ring,
                                                 options_.reconnect_attempts);
  } else if (options_.ring_reconnect != nullptr) {
    // The outcome is adopted the moment the series ends (inside a completion handler of this
    // ring), so the turn that ends flushes the requests that waited for it.
    reconnector_ = std::make_unique<RingReconnector>(ring_, *options_.ring_reconnect,
                                                     options_.reconnect_attempts,
                                                     [this] { PollReconnect(); });
  }
}

Connection::~Connection() { ResizePrivateReceiveBuffer(0); }

void Connection::AdoptMetaContexts(const nbd::ExportInfo& info) {
  parser_options_.meta_context_ids.clear();
  context_ids_.clear();
  for (const nbd::MetaContext& context : info.meta_contexts) {
    parser_options_.meta_context_ids.push_back(context.id);
    for (const nbd::MetaContext& client_context : client_contexts_) {
      if (client_context.name == context.name) context_ids_.emplace_back(context.id, client_context.id);
    }
  }
  parser_ = nbd::ReplyParser(parser_options_, this);
}

uint32_t Connection::ClientContextId(uint32_t wire_id) const {
  for (const auto& [wire, client] : context_ids_) {
    if (wire == wire_id) return client;
  }
  return wire_id;  // unreachable: the parser accepts only negotiated ids, all of them mapped
}

bool Connection::ShouldReconnect() const {
  // Only a lost connection is worth another: a server that broke the protocol or stopped
  // answering would most likely do it again.
  return reconnector_ != nullptr && !reconnector_->aborted() &&
         failure_.code() == absl::StatusCode::kUnavailable;
}

void Connection::StartReconnecting() {
  // Replies that arrived (their sends are over now: no kernel operation is left) complete
  // first, so what follows sees only requests the server has not answered.
  table_.ForEachInUse([&](uint64_t cookie, Slot& slot) {
    if (!slot.reply_done) return;
    --deferred_slots_;
    absl::Status status = std::move(slot.deferred_status);
    CompleteSlot(cookie, &slot, status);
  });
  // Every request with an unanswered part goes back to the front of the queue, whole: parts
  // of a split request that already completed are simply done again (reads and writes are
  // idempotent, and NBD promises no order between concurrent requests anyway). A split
  // request whose remaining parts were still queued is the front of pending_: it is taken out
  // there before it is linked into `requeued`, so it is queued exactly once.
  OperationQueue requeued;
  table_.ForEachInUse([&](uint64_t cookie, Slot& slot) {
    Operation* operation = slot.operation;
    ReleaseSlot(cookie, &slot);
    if (operation == nullptr) return;  // cancelled: already completed
    if (StateOf(operation).staged_bytes == 0) return;  // requeued through another of its parts
    if (!StateOf(operation).fully_staged) pending_.Remove(operation);
    StateOf(operation).staged_bytes = 0;
    StateOf(operation).parts_outstanding = 0;
    StateOf(operation).fully_staged = false;
    StateOf(operation).first_error = absl::OkStatus();
    requeued.PushBack(operation);
  });
  requeued.Append(pending_);
  pending_.Append(requeued);
  RecountQueuedBytes();
  send_in_flight_ = false;
  receive_direct_ = false;
  receive_direct_operation_ = nullptr;
  fd_ = FileDescriptor();
  tls_.reset();
  state_ = State::kReconnecting;
  options_.logger->Log(LogLevel::kInfo,
                       absl::StrCat(options_.description, ": reconnecting (",
                                    failure_.message(), ")"));
  reconnector_->Start(absl::Now() + absl::Nanoseconds(options_.reconnect_delay_ns));
}

void Connection::PollReconnect() {
  if (state_ != State::kReconnecting) return;
  std::optional<absl::StatusOr<Reconnected>> result = reconnector_->TakeResult();
  if (!result.has_value()) return;
  if (!result->ok()) {
    reconnector_->Abort();  // giving up is final for this connection
    state_ = State::kDying;
    failure_ = absl::UnavailableError(absl::StrCat(
        options_.description, ": lost the connection (", failure_.message(),
        ") and could not reconnect within ", options_.reconnect_delay_ns / 1000000,
        " ms: ", result->status().message()));
    options_.logger->Log(LogLevel::kError, failure_.message());
    MaybeFinishDying();
    return;
  }
  fd_ = std::move((*result)->fd);
  tls_ = std::move((*result)->tls);
  AdoptMetaContexts((*result)->info);
  state_ = State::kOpen;
  failure_ = absl::OkStatus();
  Increment(counters_.reconnects);
  options_.logger->Log(LogLevel::kInfo, absl::StrCat(options_.description, ": reconnected",
                                                     tls_ != nullptr ? " (TLS)" : ""));
  Start();
}

void Connection::StopReconnecting() {
  if (reconnector_ == nullptr) return;
  reconnector_->Abort();
  if (state_ != State::kReconnecting) return;
  reconnector_->TakeResult();  // whatever the aborted series produced
  state_ = State::kDying;
  failure_ = absl::UnavailableError(absl::StrCat(
      options_.description, ": the client closed while reconnecting (", failure_.message(), ")"));
  MaybeFinishDying();
}

void Connection::Start() {
  // Records that arrived with the end of the handshake come first (a conforming server sends
  // nothing before our first request, so this is about parsing a misbehaving one's bytes).
  if (tls_ != nullptr && tls_->has_pending_input()) ProcessCiphertext({});
  if (state_ == State::kOpen) ArmReceive();
}

bool Connection::Cancel(Operation* operation, uint64_t submission) {
  // Find it by address first; only an Operation this connection holds may be dereferenced.
  bool held = false;
  for (Operation* queued = pending_.front(); queued != nullptr && !held; queued = StateOf(queued).next) {
    held = queued == operation;
  }
  table_.ForEachInUse([&](uint64_t, Slot& slot) { held = held || slot.operation == operation; });
  if (!held) return false;
  if (std::atomic_ref<uint64_t>(StateOf(operation).submission).load(std::memory_order_acquire) !=
      submission) {
    return true;  // completed and resubmitted since: the cancel was for an older submission
  }
  pending_.Remove(operation);
  RecountQueuedBytes();
  table_.ForEachInUse([&](uint64_t, Slot& slot) {
    if (slot.operation == operation) slot.operation = nullptr;
  });
  StateOf(operation).cancelled = true;
  StateOf(operation).fully_staged = true;
  StateOf(operation).parts_outstanding = 0;
  cancelled_.PushBack(operation);
  CompleteCancelled();
  return true;
}

void Connection::CompleteCancelled() {
  OperationQueue waiting;
  while (Operation* operation = cancelled_.PopFront()) {
    bool in_send = send_in_flight_ && StateOf(operation).last_batch > sent_batch_;
    bool in_receive = receive_direct_ && receive_direct_operation_ == operation;
    if ((in_send || in_receive) && state_ != State::kClosed) {
      waiting.PushBack(operation);
      continue;
    }
    absl::Status status = absl::CancelledError(absl::StrCat(
        nbd::CommandName(operation->command), " at offset ", operation->offset, " length ",
        operation->length, " was cancelled"));
    StateOf(operation).cancelled = false;
    StateOf(operation).parts_outstanding = 1;
    CompleteOperationPart(operation, status, &counters_);
  }
  cancelled_.Append(waiting);
}

void Connection::CheckTimeouts(int64_t now_ns) {
  if (options_.request_timeout_ns <= 0 || state_ != State::kOpen || table_.in_use() == 0) return;
  const Slot* expired = nullptr;
  table_.ForEachInUse([&](uint64_t, Slot& slot) {
    if (!slot.reply_done && slot.deadline_ns <= now_ns && expired == nullptr) expired = &slot;
  });
  if (expired == nullptr) return;
  Fail(absl::DeadlineExceededError(absl::StrCat(
      options_.description, ": ", nbd::CommandName(expired->command), " at offset ",
      expired->offset, " length ", expired->length, " got no reply within ",
      options_.request_timeout_ns / 1000000, " ms; closing the connection")));
}

void Connection::Fail(absl::Status status) {
  if (state_ == State::kDying || state_ == State::kClosed) return;
  state_ = State::kDying;
  failure_ = std::move(status);
  options_.logger->Log(LogLevel::kError, absl::StrCat("connection failed: ", failure_.ToString(),
                                                      " (", table_.in_use(), " in flight)"));
  // Makes the kernel finish our recv and send now instead of whenever the server acts.
  shutdown(fd_.get(), SHUT_RDWR);
  if (kernel_operations_ > 0) {
    // Counted like any other SQE: the socket (and its fd number, which a reconnect may
    // reuse) must outlive the cancel.
    io_uring_sqe* sqe = ring_->Prepare(&cancel_completion_);
    io_uring_prep_cancel_fd(sqe, fd_.get(), IORING_ASYNC_CANCEL_ALL);
    ++kernel_operations_;
  }
  MaybeFinishDying();
}

void Connection::BeginSoftDisconnect(const absl::Status& reason) {
  // proto.md: a client that receives NBD_ESHUTDOWN MUST initiate a soft disconnect. Requests
  // already sent finish normally; queued ones are not sent; NBD_CMD_DISC goes out once idle.
  state_ = State::kDisconnecting;
  absl::Status not_sent = absl::UnavailableError(absl::StrCat(
      options_.description, ": not sent, the server is shutting down (", reason.message(), ")"));
  queued_bytes_ = 0;
  while (Operation* operation = pending_.PopFront()) {
    StateOf(operation).fully_staged = true;
    ++StateOf(operation).parts_outstanding;
    CompleteOperationPart(operation, not_sent, &counters_);
  }
}

void Connection::Disconnect() {
  if (state_ != State::kOpen) return;
  state_ = State::kDisconnecting;
}

void Connection::MaybeFinishDying() {
  if (kernel_operations_ > 0) return;
  if (state_ == State::kClosed) {
    fd_ = FileDescriptor();
    return;
  }
  if (state_ != State::kDying) return;
  if (ShouldReconnect()) {
    CompleteCancelled();
    StartReconnecting();
    return;
  }
  // No kernel operation refers to a caller's buffer any more: fail everything exactly once.
  // Unstaged parts first, so an Operation split over slots completes with its last slot.
  OperationQueue pending;
  pending.Append(pending_);
  queued_bytes_ = 0;
  while (Operation* operation = pending.PopFront()) {
    StateOf(operation).fully_staged = true;
    if (StateOf(operation).first_error.ok()) StateOf(operation).first_error = failure_;
    ++StateOf(operation).parts_outstanding;  // the part that will never be staged
    CompleteOperationPart(operation, failure_, &counters_);
  }
  table_.ForEachInUse([this](uint64_t cookie, Slot& slot) {
    absl::Status status = slot.reply_done ? std::move(slot.deferred_status) : failure_;
    if (slot.reply_done) --deferred_slots_;
    CompleteSlot(cookie, &slot, status);
  });
  state_ = State::kClosed;
  CompleteCancelled();
  fd_ = FileDescriptor();
}

}  // namespace nbdring
