// runtime/connection_send.cc — staging queued requests into in-flight slots and the send
// chain (one sendmsg in the kernel per connection); see connection.h for the state machine.
#include "runtime/connection.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "nbd/request.h"
#include "runtime/clock.h"
#include "runtime/counter.h"

namespace nbdring {
namespace {

// A send this small fits the socket buffer of an idle connection (Unix and TCP sockets hold
// 200 KiB or more), so it completes inside the io_uring_enter that submits it.
constexpr size_t kInlineSendBytes = 64 * 1024;

}  // namespace

void Connection::Enqueue(Operation* operation) {
  pending_.PushBack(operation);
  queued_bytes_ += operation->length + nbd::kCompactRequestSize;
}

void Connection::RecountQueuedBytes() {
  queued_bytes_ = 0;
  for (Operation* operation = pending_.front(); operation != nullptr; operation = StateOf(operation).next) {
    queued_bytes_ += operation->length - StateOf(operation).staged_bytes + nbd::kCompactRequestSize;
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
    SealAndPost(/*then_close_notify=*/true);
  }
  // Records the session wrote on its own while opening (a TLS 1.3 key update answer).
  if (!send_in_flight_ && tls_ != nullptr && tls_->has_output() &&
      (state_ == State::kOpen || state_ == State::kDisconnecting)) {
    iovec_first_ = 0;
    iovec_count_ = 0;
    SealAndPost();
  }
}

void Connection::SealAndPost(bool then_close_notify) {
  if (tls_ != nullptr) {
    close_notify_after_batch_ = then_close_notify;
    if (!SealNextChunk()) return;
  }
  PostSend();
}

bool Connection::SealNextChunk() {
  // Whole iovecs while they fit the chunk, then a prefix of the next one (the rest stays in
  // iovecs_ for the next chunk).
  size_t budget = kTlsSealChunkBytes;
  const size_t first = iovec_first_;
  iovec partial{};
  while (iovec_first_ < iovec_count_ && budget > 0) {
    iovec& piece = iovecs_[iovec_first_];
    if (piece.iov_len <= budget) {
      budget -= piece.iov_len;
      ++iovec_first_;
      continue;
    }
    partial = {piece.iov_base, budget};
    piece.iov_base = static_cast<uint8_t*>(piece.iov_base) + budget;
    piece.iov_len -= budget;
    budget = 0;
  }
  absl::Status sealed = tls_->Seal(absl::MakeConstSpan(&iovecs_[first], iovec_first_ - first));
  if (sealed.ok() && partial.iov_len > 0) sealed = tls_->Seal(absl::MakeConstSpan(&partial, 1));
  if (!sealed.ok()) {
    Fail(absl::Status(sealed.code(), absl::StrCat(options_.description, ": ", sealed.message())));
    return false;
  }
  if (iovec_first_ == iovec_count_ && close_notify_after_batch_) tls_->Close();
  tls_->TakeOutput(&sealed_);
  sealed_unsent_ = {sealed_.data(), sealed_.size()};
  return true;
}

void Connection::StageBatch() {
  size_t header_bytes = 0;
  iovec_first_ = 0;
  iovec_count_ = 0;
  bool previous_was_header = false;
  bool staged = false;
  const int64_t now_ns =
      options_.request_timeout_ns > 0 || adaptive_ != nullptr ? MonotonicNanoseconds() : 0;
  while (!pending_.empty()) {
    Operation* operation = pending_.front();
    Slot* slot = nullptr;
    uint64_t cookie = table_.in_use() < admit_limit_ ? table_.Acquire(&slot) : 0;
    if (cookie == 0) {
      // Backpressure: the rest waits for replies to free slots.
      for (Operation* waiting = operation; waiting != nullptr; waiting = StateOf(waiting).next) {
        if (!StateOf(waiting).waited_for_slot) {
          StateOf(waiting).waited_for_slot = true;
          Increment(counters_.queue_full_waits);
        }
      }
      break;
    }
    if (!staged) {
      staged = true;
      ++batch_;
    }
    uint64_t part_offset = StateOf(operation).staged_bytes;
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
    slot->staged_ns = now_ns;
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
    if (options_.logger->enabled(LogLevel::kDebug)) {
      options_.logger->Log(LogLevel::kDebug,
                           absl::StrCat(options_.description, ": request ",
                                        nbd::CommandName(header.command), " cookie ", cookie,
                                        " offset ", header.offset, " length ", header.length,
                                        " flags 0x", absl::Hex(header.flags)));
    }
    outstanding_bytes_ += part_length + nbd::kCompactRequestSize;
    ++StateOf(operation).parts_outstanding;
    StateOf(operation).last_batch = batch_;
    StateOf(operation).staged_bytes += part_length;
    queued_bytes_ -= std::min(queued_bytes_, part_length);
    if (StateOf(operation).staged_bytes >= operation->length ||
        operation->command == nbd::Command::kBlockStatus) {
      StateOf(operation).fully_staged = true;
      pending_.PopFront();
      // Its header share, and the remainder a clamped BLOCK_STATUS never stages.
      uint64_t rest = operation->length - StateOf(operation).staged_bytes + nbd::kCompactRequestSize;
      queued_bytes_ -= std::min(queued_bytes_, rest);
    }
  }
  if (iovec_count_ > 0) SealAndPost();
}

void Connection::PostSend() {
  message_ = {};
  if (tls_ != nullptr) {
    message_.msg_iov = &sealed_unsent_;
    message_.msg_iovlen = 1;
  } else {
    message_.msg_iov = &iovecs_[iovec_first_];
    message_.msg_iovlen = iovec_count_ - iovec_first_;
  }
  io_uring_sqe* sqe = ring_->Prepare(&send_completion_);
  // MSG_WAITALL: the kernel resumes a send the socket buffer cut short by itself instead of
  // completing it short (one CQE and one more sendmsg per buffer-full: 1 MiB writes went
  // from 4.4 to 1.4 io_uring_enter calls each). OnSend still handles a short count, which
  // an error or shutdown can cause.
  io_uring_prep_sendmsg(sqe, fd_.get(), &message_, MSG_NOSIGNAL | MSG_WAITALL);
  size_t bytes = 0;
  for (size_t i = 0; i < message_.msg_iovlen; ++i) bytes += message_.msg_iov[i].iov_len;
  inline_send_posted_ = bytes <= kInlineSendBytes;
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
  if (self->tls_ != nullptr) {
    self->sealed_unsent_.iov_base = static_cast<uint8_t*>(self->sealed_unsent_.iov_base) + sent;
    self->sealed_unsent_.iov_len -= std::min(sent, self->sealed_unsent_.iov_len);
    if (self->sealed_unsent_.iov_len > 0) {
      self->PostSend();
      self->inline_send_posted_ = false;  // the socket buffer was full: this one may wait
      return;
    }
    if (self->iovec_first_ < self->iovec_count_) {  // the batch's next chunk
      if (self->SealNextChunk()) self->PostSend();
      return;
    }
  } else {
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
      self->inline_send_posted_ = false;  // the socket buffer was full: this one may wait
      return;
    }
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

}  // namespace nbdring
