// runtime/connection_receive.cc — the armed recv (into the receive buffer, or straight into
// a large read's buffer), reply events dispatched to their slots, and completion: a slot is
// finished only once the send that carried its request is over, and an Operation completes
// with its last part.
#include "runtime/connection.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
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
  if (!status.ok() && StateOf(operation).first_error.ok()) StateOf(operation).first_error = status;
  if (StateOf(operation).parts_outstanding > 0) --StateOf(operation).parts_outstanding;
  if (StateOf(operation).parts_outstanding != 0 || !StateOf(operation).fully_staged) return;
  absl::Status final_status = std::move(StateOf(operation).first_error);
  // Reset the private state first: the callback may resubmit the same Operation.
  StateOf(operation).first_error = absl::OkStatus();
  StateOf(operation).staged_bytes = 0;
  StateOf(operation).fully_staged = false;
  StateOf(operation).waited_for_slot = false;
  StateOf(operation).cancelled = false;
  StateOf(operation).next = nullptr;
  if (counters != nullptr) {
    Increment(counters->requests);
    if (!final_status.ok()) Increment(counters->errors);
    if (counters->latency != nullptr) {
      counters->latency->Record(operation->command,
                                MonotonicNanoseconds() - StateOf(operation).submitted_ns);
    }
  }
  operation->on_complete(operation, final_status);
}

nbd::InflightRequest* Connection::Find(uint64_t cookie) {
  Slot* slot = table_.Find(cookie);
  if (slot == nullptr || slot->reply_done) return nullptr;
  return slot;
}

void Connection::ArmReceive() {
  nbd::ReplyParser::PayloadTarget target;
  io_uring_sqe* sqe = ring_->Prepare(&receive_completion_);
  if (tls_ == nullptr && parser_.payload_target(&target) &&
      target.remaining >= options_.direct_receive_bytes &&
      static_cast<Slot*>(target.request)->operation != nullptr) {
    auto* slot = static_cast<Slot*>(target.request);
    uint8_t* destination = static_cast<uint8_t*>(slot->operation->buffer) + slot->part_offset +
                           target.buffer_offset;
    size_t length = static_cast<size_t>(std::min(target.remaining, kMaxDirectReceive));
    io_uring_prep_recv(sqe, fd_.get(), destination, length, MSG_WAITALL);
    receive_direct_ = true;
    receive_direct_operation_ = slot->operation;
  } else {
    receive_direct_ = false;
    receive_direct_operation_ = nullptr;
    const bool shared = shared_receive_ != nullptr && receive_into_ == ReceiveInto::kShared;
    if (!shared && receive_buffer_ == nullptr) {
      // A busy connection has just filled a shared buffer: start above that. One that only
      // found the shared ring empty gets as much as a shared buffer would have given it.
      uint32_t initial_bytes = kInitialReceiveBytes;
      if (receive_into_ == ReceiveInto::kPrivate) initial_bytes = 2 * SharedReceiveBytes();
      if (receive_into_ == ReceiveInto::kPrivateOnce) initial_bytes = SharedReceiveBytes();
      ResizePrivateReceiveBuffer(std::min(initial_bytes, options_.receive_buffer_bytes));
    }
    const uint32_t capacity = shared ? SharedReceiveBytes() : receive_buffer_capacity_;
    // While a large read may be next on the wire, take little beyond its header here, so
    // its payload lands in the caller's buffer instead of being copied out of this one.
    const uint32_t length = large_payloads_in_flight_ > 0 && tls_ == nullptr
                                ? std::min(capacity, kLargePayloadStagingBytes)
                                : capacity;
    io_uring_prep_recv(sqe, fd_.get(), shared ? nullptr : receive_buffer_.get(), length, 0);
    if (shared) {
      sqe->flags |= IOSQE_BUFFER_SELECT;
      sqe->buf_group = ReceiveBufferRing::kGroupId;
    }
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
  // A shared buffer the kernel filled goes back to the ring once its bytes are parsed (the
  // parser keeps partial replies itself), on every path out of here.
  const bool selected = (completion->flags & IORING_CQE_F_BUFFER) != 0;
  const auto buffer_id = static_cast<uint16_t>(completion->flags >> IORING_CQE_BUFFER_SHIFT);
  absl::Cleanup give_back = [self, selected, buffer_id] {
    if (selected) self->shared_receive_->Return(buffer_id);
  };
  const uint8_t* shared_bytes = selected ? self->shared_receive_->buffer(buffer_id) : nullptr;
  if (self->state_ == State::kDying) {
    self->MaybeFinishDying();
    return;
  }
  if (self->state_ == State::kDisconnecting && self->disconnect_sent_ && result <= 0) {
    self->state_ = State::kClosed;
    self->MaybeFinishDying();
    return;
  }
  if (result == -ENOBUFS && self->shared_receive_ != nullptr) {
    // The shared ring was empty: it grows; at its maximum the recv is armed on it again
    // (the buffers of this reap are back before the next submission), unless no buffer came
    // back since this connection's last -ENOBUFS: then one recv goes into a private buffer.
    // Either way no recv is retried without progress: no spin.
    Increment(self->ring_->counters().shared_receive_exhausted);
    ReceiveBufferRing& shared = *self->shared_receive_;
    if (!shared.Grow()) {
      if (self->shared_receive_exhausted_ &&
          shared.returned() == self->shared_returned_at_exhaustion_) {
        // Nothing came back: no retry on the ring.
        self->receive_into_ = ReceiveInto::kPrivateOnce;
        self->shared_receive_exhausted_ = false;
      } else {
        self->shared_receive_exhausted_ = true;
        self->shared_returned_at_exhaustion_ = shared.returned();
      }
    }
    self->ArmReceive();
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
    const uint8_t* bytes = shared_bytes != nullptr ? shared_bytes : self->receive_buffer_.get();
    if (self->tls_ != nullptr) {
      self->ProcessCiphertext(absl::MakeConstSpan(bytes, static_cast<size_t>(result)));
    } else {
      self->ProcessInput(absl::MakeConstSpan(bytes, static_cast<size_t>(result)));
    }
    // The bytes were all consumed above (the parser and the TLS session keep partial units).
    self->shared_receive_exhausted_ = false;
    self->AdaptReceiveBuffer(shared_bytes != nullptr, static_cast<uint32_t>(result));
  }
  std::move(give_back).Invoke();  // before the next recv may need the buffer
  if (self->state_ == State::kOpen || self->state_ == State::kDisconnecting) self->ArmReceive();
  if (!self->cancelled_.empty()) self->CompleteCancelled();
}

void Connection::AdaptReceiveBuffer(bool was_shared, uint32_t received) {
  if (was_shared) {
    // A whole shared buffer means more was waiting: a busy connection, which takes many
    // replies per recv into a private buffer from now on.
    if (received == SharedReceiveBytes()) receive_into_ = ReceiveInto::kPrivate;
    return;
  }
  if (received == receive_buffer_capacity_) {
    // Full: more was waiting. The next recv gets room for twice as much, and a connection
    // that took a private buffer because the shared ring was empty keeps it: it is busy.
    if (receive_into_ == ReceiveInto::kPrivateOnce) receive_into_ = ReceiveInto::kPrivate;
    if (receive_buffer_capacity_ < options_.receive_buffer_bytes) {
      ResizePrivateReceiveBuffer(
          std::min(receive_buffer_capacity_ * 2, options_.receive_buffer_bytes));
    }
  } else if (receive_into_ == ReceiveInto::kPrivateOnce) {
    receive_into_ = ReceiveInto::kShared;  // back to the shared buffers, holding none
    ResizePrivateReceiveBuffer(0);
  }
}

void Connection::ResizePrivateReceiveBuffer(uint32_t capacity) {
  RingCounters& gauges = ring_->counters();
  if (receive_buffer_ != nullptr) {
    gauges.private_receive_buffers.fetch_sub(1, std::memory_order_relaxed);
    gauges.private_receive_bytes.fetch_sub(receive_buffer_capacity_, std::memory_order_relaxed);
  }
  receive_buffer_.reset();
  receive_buffer_capacity_ = capacity;
  if (capacity == 0) return;
  // Not value-initialised: the kernel writes it before anything reads it.
  receive_buffer_.reset(new uint8_t[capacity]);
  gauges.private_receive_buffers.fetch_add(1, std::memory_order_relaxed);
  gauges.private_receive_bytes.fetch_add(capacity, std::memory_order_relaxed);
}

void Connection::ProcessCiphertext(absl::Span<const uint8_t> ciphertext) {
  while (state_ == State::kOpen || state_ == State::kDisconnecting) {
    // Inside a read payload, records open straight into the caller's buffer.
    nbd::ReplyParser::PayloadTarget target;
    uint8_t* destination = plaintext_.get();
    size_t capacity = kTlsPlaintextBytes;
    bool direct = false;
    if (parser_.payload_target(&target) && target.remaining > 0 &&
        static_cast<Slot*>(target.request)->operation != nullptr) {
      auto* slot = static_cast<Slot*>(target.request);
      destination = static_cast<uint8_t*>(slot->operation->buffer) + slot->part_offset +
                    target.buffer_offset;
      capacity = static_cast<size_t>(std::min(target.remaining, kMaxDirectReceive));
      direct = true;
    }
    absl::StatusOr<size_t> opened = tls_->Open(destination, capacity, &ciphertext);
    if (!opened.ok()) {
      Fail(absl::Status(opened.status().code(),
                        absl::StrCat(options_.description, ": ", opened.status().message())));
      return;
    }
    if (*opened == 0) return;  // every record so far is open
    if (direct) {
      Increment(counters_.bytes_read, *opened);
      parser_.PayloadReceivedDirectly(*opened);
      ProcessInput({});
    } else {
      ProcessInput(absl::MakeConstSpan(destination, *opened));
    }
  }
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
        if (options_.logger->enabled(LogLevel::kDebug)) {
          options_.logger->Log(LogLevel::kDebug,
                               absl::StrCat(options_.description, ": reply cookie ", event.cookie,
                                            " ", nbd::CommandName(slot->command), ": ",
                                            event.status.ok() ? "OK" : event.status.ToString()));
        }
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

// Adaptive limit: every reply is a sample for the connection's InflightLimiter
// (adaptive_limit.h), and admission follows the limit it answers with; StageBatch admits
// while fewer than admit_limit_ are in flight, so a raised limit takes effect at the ring's
// next Flush of this connection.
void Connection::ObserveReply(const Slot& slot) {
  const int64_t now_ns = MonotonicNanoseconds();
  admit_limit_ = adaptive_->OnReply(now_ns, now_ns - slot.staged_ns, table_.in_use());
}

void Connection::FinishSlot(uint64_t cookie, Slot* slot, const absl::Status& status) {
  if (adaptive_ != nullptr) ObserveReply(*slot);
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

}  // namespace nbdring
