#include "runtime/connection.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "nbd/errors.h"
#include "nbd/request.h"
#include "runtime/clock.h"
#include "runtime/counter.h"

namespace nbdring {
namespace {

// A recv longer than this is split into several; the kernel caps single transfers anyway.
constexpr uint64_t kMaxDirectReceive = 1u << 30;
constexpr uint32_t kLargePayloadStagingBytes = 4096;

}  // namespace

void CompleteOperationPart(Operation* operation, const absl::Status& status,
                           ConnectionCounters* counters) {
  if (!status.ok() && operation->first_error_.ok()) operation->first_error_ = status;
  if (operation->parts_outstanding_ > 0) --operation->parts_outstanding_;
  if (operation->parts_outstanding_ != 0 || !operation->fully_staged_) return;
  absl::Status final_status = std::move(operation->first_error_);
  // Reset the private state first: the callback may resubmit the same Operation.
  operation->first_error_ = absl::OkStatus();
  operation->staged_bytes_ = 0;
  operation->fully_staged_ = false;
  operation->waited_for_slot_ = false;
  operation->cancelled_ = false;
  operation->next_ = nullptr;
  if (counters != nullptr) {
    Increment(counters->requests);
    if (!final_status.ok()) Increment(counters->errors);
  }
  operation->on_complete(operation, final_status);
}

Connection::Connection(Ring* ring, FileDescriptor fd, const nbd::ExportInfo& info,
                       std::vector<nbd::MetaContext> client_contexts, ConnectionOptions options)
    : ring_(ring),
      fd_(std::move(fd)),
      options_(std::move(options)),
      extended_headers_(info.extended_headers()),
      table_(options_.inflight_limit),
      parser_(nbd::ReplyParserOptions{}, this),
      client_contexts_(std::move(client_contexts)) {
  parser_options_.mode = info.reply_mode;
  AdoptMetaContexts(info);
  // One header per slot plus NBD_CMD_DISC; a header and a payload iovec per slot.
  headers_ = std::make_unique<uint8_t[]>((options_.inflight_limit + 1) * nbd::kExtendedRequestSize);
  iovecs_.resize(2 * options_.inflight_limit + 2);
  receive_buffer_ = std::make_unique<uint8_t[]>(options_.receive_buffer_bytes);
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
    reconnector_ = std::make_unique<Reconnector>(options_.reconnect, options_.wake_ring);
  }
}

Connection::~Connection() = default;

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
    if (operation->staged_bytes_ == 0) return;  // requeued through another of its parts
    if (!operation->fully_staged_) pending_.Remove(operation);
    operation->staged_bytes_ = 0;
    operation->parts_outstanding_ = 0;
    operation->fully_staged_ = false;
    operation->first_error_ = absl::OkStatus();
    requeued.PushBack(operation);
  });
  requeued.Append(pending_);
  pending_.Append(requeued);
  RecountQueuedBytes();
  send_in_flight_ = false;
  receive_direct_ = false;
  receive_direct_operation_ = nullptr;
  fd_ = FileDescriptor();
  state_ = State::kReconnecting;
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
    MaybeFinishDying();
    return;
  }
  fd_ = std::move((*result)->fd);
  AdoptMetaContexts((*result)->info);
  state_ = State::kOpen;
  failure_ = absl::OkStatus();
  Increment(counters_.reconnects);
  ArmReceive();
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

void Connection::Start() { ArmReceive(); }

nbd::InflightRequest* Connection::Find(uint64_t cookie) {
  Slot* slot = table_.Find(cookie);
  if (slot == nullptr || slot->reply_done) return nullptr;
  return slot;
}

void Connection::Enqueue(Operation* operation) {
  pending_.PushBack(operation);
  queued_bytes_ += operation->length + nbd::kCompactRequestSize;
}

void Connection::RecountQueuedBytes() {
  queued_bytes_ = 0;
  for (Operation* operation = pending_.front(); operation != nullptr; operation = operation->next_) {
    queued_bytes_ += operation->length - operation->staged_bytes_ + nbd::kCompactRequestSize;
  }
}

uint64_t Connection::PartLimit(const Operation& operation) const {
  switch (operation.command) {
    case nbd::Command::kRead:
    case nbd::Command::kWrite:
      return options_.max_payload_part;
    case nbd::Command::kTrim:
    case nbd::Command::kWriteZeroes:
    case nbd::Command::kCache:
      return extended_headers_ ? UINT64_MAX : options_.max_effect_part;
    case nbd::Command::kBlockStatus:
      // Never split: a compact request says at most what 32 bits hold, and the server may
      // describe a prefix of the range anyway.
      return extended_headers_ ? UINT64_MAX : options_.max_effect_part;
    default:
      return UINT64_MAX;  // FLUSH has no length
  }
}

void Connection::Flush() {
  if (send_in_flight_) return;
  if (state_ == State::kOpen) {
    StageBatch();
  } else if (state_ == State::kDisconnecting && !disconnect_sent_ && idle()) {
    nbd::RequestHeader request;
    request.command = nbd::Command::kDisc;
    size_t size = nbd::EncodeRequest(request, extended_headers_, headers_.get());
    iovecs_[0] = {headers_.get(), size};
    iovec_first_ = 0;
    iovec_count_ = 1;
    disconnect_sent_ = true;
    PostSend();
  }
}

void Connection::StageBatch() {
  size_t header_bytes = 0;
  iovec_first_ = 0;
  iovec_count_ = 0;
  bool previous_was_header = false;
  bool staged = false;
  const int64_t now_ns = options_.request_timeout_ns > 0 ? MonotonicNanoseconds() : 0;
  while (!pending_.empty()) {
    Operation* operation = pending_.front();
    Slot* slot = nullptr;
    uint64_t cookie = table_.Acquire(&slot);
    if (cookie == 0) {
      // Backpressure: the rest waits for replies to free slots.
      for (Operation* waiting = operation; waiting != nullptr; waiting = waiting->next_) {
        if (!waiting->waited_for_slot_) {
          waiting->waited_for_slot_ = true;
          Increment(counters_.queue_full_waits);
        }
      }
      break;
    }
    if (!staged) {
      staged = true;
      ++batch_;
    }
    uint64_t part_offset = operation->staged_bytes_;
    uint64_t part_length = std::min(operation->length - part_offset, PartLimit(*operation));
    slot->command = operation->command;
    slot->flags = operation->flags;
    slot->offset = operation->offset + part_offset;
    slot->length = part_length;
    slot->progress.Reset();
    slot->operation = operation;
    slot->part_offset = part_offset;
    slot->batch = batch_;
    slot->reply_done = false;
    slot->deadline_ns = DeadlineAfter(now_ns, options_.request_timeout_ns);
    slot->large_payload = (operation->command == nbd::Command::kRead ||
                           operation->command == nbd::Command::kWrite) &&
                          part_length >= options_.direct_receive_bytes;
    if (slot->large_payload) ++large_payloads_in_flight_;

    nbd::RequestHeader header;
    header.command = operation->command;
    header.flags = operation->flags;
    if (extended_headers_ && operation->command == nbd::Command::kWrite) {
      // With extended headers the length field is an effect length unless this flag says
      // it is the payload's length.
      header.flags |= nbd::kCmdFlagPayloadLen;
    }
    header.cookie = cookie;
    header.offset = slot->offset;
    header.length = part_length;
    uint8_t* header_start = headers_.get() + header_bytes;
    size_t header_size = nbd::EncodeRequest(header, extended_headers_, header_start);
    header_bytes += header_size;
    if (previous_was_header) {
      iovecs_[iovec_count_ - 1].iov_len += header_size;  // contiguous with the last header
    } else {
      iovecs_[iovec_count_++] = {header_start, header_size};
    }
    previous_was_header = true;
    if (operation->command == nbd::Command::kWrite) {
      iovecs_[iovec_count_++] = {static_cast<uint8_t*>(operation->buffer) + part_offset,
                                 part_length};
      previous_was_header = false;
      Increment(counters_.bytes_written, part_length);
    }
    Increment(counters_.wire_requests);
    outstanding_bytes_ += part_length + nbd::kCompactRequestSize;
    ++operation->parts_outstanding_;
    operation->last_batch_ = batch_;
    operation->staged_bytes_ += part_length;
    queued_bytes_ -= std::min(queued_bytes_, part_length);
    if (operation->staged_bytes_ >= operation->length ||
        operation->command == nbd::Command::kBlockStatus) {
      operation->fully_staged_ = true;
      pending_.PopFront();
      // Its header share, and the remainder a clamped BLOCK_STATUS never stages.
      uint64_t rest = operation->length - operation->staged_bytes_ + nbd::kCompactRequestSize;
      queued_bytes_ -= std::min(queued_bytes_, rest);
    }
  }
  if (iovec_count_ > 0) PostSend();
}

void Connection::PostSend() {
  message_ = {};
  message_.msg_iov = &iovecs_[iovec_first_];
  message_.msg_iovlen = iovec_count_ - iovec_first_;
  io_uring_sqe* sqe = ring_->Prepare(&send_completion_);
  // MSG_WAITALL: the kernel resumes a send the socket buffer cut short by itself instead of
  // completing it short (one CQE and one more sendmsg per buffer-full: 1 MiB writes went
  // from 4.4 to 1.4 io_uring_enter calls each). OnSend still handles a short count, which
  // an error or shutdown can cause.
  io_uring_prep_sendmsg(sqe, fd_.get(), &message_, MSG_NOSIGNAL | MSG_WAITALL);
  send_in_flight_ = true;
  ++kernel_operations_;
}

void Connection::OnSend(IoCompletion* completion) {
  auto* self = static_cast<Connection*>(completion->owner);
  --self->kernel_operations_;
  self->send_in_flight_ = false;
  int32_t result = completion->result;
  if (self->state_ == State::kDying) {
    self->MaybeFinishDying();
    return;
  }
  if (result == -EINTR || result == -EAGAIN) {
    self->PostSend();
    return;
  }
  if (result < 0) {
    self->Fail(absl::UnavailableError(absl::StrCat(self->options_.description,
                                                   ": sending to the server failed: ",
                                                   std::strerror(-result))));
    return;
  }
  // Advance past what the kernel took; a short send leaves the rest for another sendmsg.
  size_t sent = static_cast<size_t>(result);
  while (sent > 0 && self->iovec_first_ < self->iovec_count_) {
    iovec& vector = self->iovecs_[self->iovec_first_];
    if (sent >= vector.iov_len) {
      sent -= vector.iov_len;
      ++self->iovec_first_;
    } else {
      vector.iov_base = static_cast<uint8_t*>(vector.iov_base) + sent;
      vector.iov_len -= sent;
      sent = 0;
    }
  }
  if (self->iovec_first_ < self->iovec_count_) {
    self->PostSend();
    return;
  }
  self->sent_batch_ = self->batch_;
  if (self->state_ == State::kDisconnecting && self->disconnect_sent_) {
    // NBD_CMD_DISC is out: no reply comes. Shutting the socket down ends our recv.
    shutdown(self->fd_.get(), SHUT_RDWR);
    return;
  }
  if (self->deferred_slots_ > 0) self->CompleteDeferredSlots();
  if (!self->cancelled_.empty()) self->CompleteCancelled();
}

void Connection::ArmReceive() {
  nbd::ReplyParser::PayloadTarget target;
  io_uring_sqe* sqe = ring_->Prepare(&receive_completion_);
  if (parser_.payload_target(&target) && target.remaining >= options_.direct_receive_bytes &&
      static_cast<Slot*>(target.request)->operation != nullptr) {
    auto* slot = static_cast<Slot*>(target.request);
    uint8_t* destination = static_cast<uint8_t*>(slot->operation->buffer) + slot->part_offset +
                           target.buffer_offset;
    size_t length = static_cast<size_t>(std::min(target.remaining, kMaxDirectReceive));
    io_uring_prep_recv(sqe, fd_.get(), destination, length, MSG_WAITALL);
    receive_direct_ = true;
    receive_direct_operation_ = slot->operation;
  } else {
    // While a large read may be next on the wire, take little beyond its header here, so
    // its payload lands in the caller's buffer instead of being copied out of this one.
    const uint32_t length = large_payloads_in_flight_ > 0
                                ? std::min(options_.receive_buffer_bytes, kLargePayloadStagingBytes)
                                : options_.receive_buffer_bytes;
    io_uring_prep_recv(sqe, fd_.get(), receive_buffer_.get(), length, 0);
    receive_direct_ = false;
    receive_direct_operation_ = nullptr;
  }
  ++kernel_operations_;
}

void Connection::OnReceive(IoCompletion* completion) {
  auto* self = static_cast<Connection*>(completion->owner);
  --self->kernel_operations_;
  int32_t result = completion->result;
  const bool was_direct = self->receive_direct_;
  self->receive_direct_ = false;
  self->receive_direct_operation_ = nullptr;
  if (self->state_ == State::kDying) {
    self->MaybeFinishDying();
    return;
  }
  if (self->state_ == State::kDisconnecting && self->disconnect_sent_ && result <= 0) {
    self->state_ = State::kClosed;
    self->MaybeFinishDying();
    return;
  }
  if (result == -EINTR || result == -EAGAIN || result == -ENOBUFS) {
    self->ArmReceive();
    return;
  }
  if (result < 0) {
    self->Fail(absl::UnavailableError(absl::StrCat(
        self->options_.description, ": receiving from the server failed: ", std::strerror(-result))));
    return;
  }
  if (result == 0) {
    self->Fail(absl::UnavailableError(absl::StrCat(
        self->options_.description, ": the server closed the connection with ",
        self->table_.in_use(), " request(s) in flight")));
    return;
  }
  if (was_direct) {
    Increment(self->counters_.bytes_read, static_cast<uint64_t>(result));
    self->parser_.PayloadReceivedDirectly(static_cast<uint64_t>(result));
    self->ProcessInput({});
  } else {
    self->ProcessInput(absl::MakeConstSpan(self->receive_buffer_.get(), static_cast<size_t>(result)));
  }
  if (self->state_ == State::kOpen || self->state_ == State::kDisconnecting) self->ArmReceive();
  if (!self->cancelled_.empty()) self->CompleteCancelled();
}

void Connection::ProcessInput(absl::Span<const uint8_t> input) {
  while (state_ == State::kOpen || state_ == State::kDisconnecting) {
    nbd::ReplyEvent event;
    absl::StatusOr<size_t> consumed = parser_.Next(input, &event);
    if (!consumed.ok()) {
      Fail(absl::Status(consumed.status().code(),
                        absl::StrCat(options_.description, ": ", consumed.status().message())));
      return;
    }
    input.remove_prefix(*consumed);
    if (event.kind == nbd::ReplyEvent::Kind::kNone) {
      if (*consumed == 0) return;
      continue;
    }
    auto* slot = static_cast<Slot*>(event.request);
    Operation* operation = slot->operation;
    if (operation == nullptr && event.kind != nbd::ReplyEvent::Kind::kDone) {
      continue;  // a cancelled request's reply: parsed for framing, then dropped
    }
    switch (event.kind) {
      case nbd::ReplyEvent::Kind::kReadData:
        Increment(counters_.bytes_read, event.data.size());
        std::memcpy(static_cast<uint8_t*>(operation->buffer) + slot->part_offset +
                        event.buffer_offset,
                    event.data.data(), event.data.size());
        break;
      case nbd::ReplyEvent::Kind::kReadHole:
        Increment(counters_.bytes_read, event.length);
        std::memset(static_cast<uint8_t*>(operation->buffer) + slot->part_offset +
                        event.buffer_offset,
                    0, event.length);
        if (operation->on_hole != nullptr) {
          operation->on_hole(operation, slot->part_offset + event.buffer_offset, event.length);
        }
        break;
      case nbd::ReplyEvent::Kind::kBlockStatus:
        if (operation->on_extents != nullptr) {
          operation->on_extents(operation, ClientContextId(event.context_id), event.extents);
        }
        break;
      case nbd::ReplyEvent::Kind::kDone:
        if (!event.status.ok() && state_ == State::kOpen &&
            nbd::NbdErrorOf(event.status) == nbd::kEShutdown) {
          BeginSoftDisconnect(event.status);
        }
        FinishSlot(event.cookie, slot, event.status);
        break;
      case nbd::ReplyEvent::Kind::kNone:
        break;
    }
  }
}

void Connection::FinishSlot(uint64_t cookie, Slot* slot, const absl::Status& status) {
  if (slot->batch > sent_batch_) {
    // The request's send has not completed: the kernel may still read the write buffer.
    slot->reply_done = true;
    slot->deferred_status = status;
    ++deferred_slots_;
    return;
  }
  CompleteSlot(cookie, slot, status);
}

void Connection::CompleteDeferredSlots() {
  table_.ForEachInUse([this](uint64_t cookie, Slot& slot) {
    if (slot.reply_done && slot.batch <= sent_batch_) {
      --deferred_slots_;
      absl::Status status = std::move(slot.deferred_status);
      CompleteSlot(cookie, &slot, status);
    }
  });
}

void Connection::CompleteSlot(uint64_t cookie, Slot* slot, const absl::Status& status) {
  Operation* operation = slot->operation;
  ReleaseSlot(cookie, slot);
  if (operation != nullptr) CompleteOperationPart(operation, status, &counters_);
}

void Connection::ReleaseSlot(uint64_t cookie, Slot* slot) {
  outstanding_bytes_ -= slot->length + nbd::kCompactRequestSize;
  if (slot->large_payload) --large_payloads_in_flight_;
  slot->large_payload = false;
  slot->operation = nullptr;
  slot->reply_done = false;
  table_.Release(cookie);
}

bool Connection::Cancel(Operation* operation, uint64_t submission) {
  // Find it by address first; only an Operation this connection holds may be dereferenced.
  bool held = false;
  for (Operation* queued = pending_.front(); queued != nullptr && !held; queued = queued->next_) {
    held = queued == operation;
  }
  table_.ForEachInUse([&](uint64_t, Slot& slot) { held = held || slot.operation == operation; });
  if (!held) return false;
  if (std::atomic_ref<uint64_t>(operation->submission_).load(std::memory_order_acquire) !=
      submission) {
    return true;  // completed and resubmitted since: the cancel was for an older submission
  }
  pending_.Remove(operation);
  RecountQueuedBytes();
  table_.ForEachInUse([&](uint64_t, Slot& slot) {
    if (slot.operation == operation) slot.operation = nullptr;
  });
  operation->cancelled_ = true;
  operation->fully_staged_ = true;
  operation->parts_outstanding_ = 0;
  cancelled_.PushBack(operation);
  CompleteCancelled();
  return true;
}

void Connection::CompleteCancelled() {
  OperationQueue waiting;
  while (Operation* operation = cancelled_.PopFront()) {
    bool in_send = send_in_flight_ && operation->last_batch_ > sent_batch_;
    bool in_receive = receive_direct_ && receive_direct_operation_ == operation;
    if ((in_send || in_receive) && state_ != State::kClosed) {
      waiting.PushBack(operation);
      continue;
    }
    absl::Status status = absl::CancelledError(absl::StrCat(
        nbd::CommandName(operation->command), " at offset ", operation->offset, " length ",
        operation->length, " was cancelled"));
    operation->cancelled_ = false;
    operation->parts_outstanding_ = 1;
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
    operation->fully_staged_ = true;
    ++operation->parts_outstanding_;
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
    operation->fully_staged_ = true;
    if (operation->first_error_.ok()) operation->first_error_ = failure_;
    ++operation->parts_outstanding_;  // the part that will never be staged
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
