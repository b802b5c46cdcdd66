// nbdring::Client's API once connected: submit, cancel, poll, close, stats, and the
// convenience and *Sync calls (Connect and its siblings are in client_connect.cc).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "nbd/request.h"
#include "nbdring/client.h"
#include "runtime/client_impl.h"
#include "runtime/clock.h"
#include "runtime/operation_state.h"

namespace nbdring {
namespace {

struct CallbackOperation : Operation {
  Client::Callback done;
  Client::ExtentsCallback extents;
};

void OnCallbackOperationComplete(Operation* operation, const absl::Status& status) {
  auto* owned = static_cast<CallbackOperation*>(operation);
  Client::Callback done = std::move(owned->done);
  delete owned;
  done(status);
}

void OnCallbackOperationExtents(Operation* operation, uint32_t context_id,
                                absl::Span<const Extent> extents) {
  auto* owned = static_cast<CallbackOperation*>(operation);
  if (owned->extents) owned->extents(context_id, extents);
}

struct SyncOperation : Operation {
  std::atomic<bool> done{false};
  absl::Status status;
  std::vector<std::pair<uint32_t, std::vector<Extent>>>* extents = nullptr;
};

// A copy of `status` that shares nothing with it (code, message and payloads, such as the
// server's NBD error). The waiting thread gets its own: copies of one absl::Status share a
// reference-counted representation, and ThreadSanitizer cannot see the count inside
// Debian's uninstrumented Abseil, so a status the ring thread releases after waking the
// waiter shows up there as a race (docs/embedding.md).
absl::Status UnsharedCopy(const absl::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status copy(status.code(), std::string(status.message()));
  status.ForEachPayload([&copy](absl::string_view type_url, const absl::Cord& payload) {
    copy.SetPayload(type_url, absl::Cord(std::string(payload)));
  });
  return copy;
}

void OnSyncComplete(Operation* operation, const absl::Status& status) {
  auto* sync = static_cast<SyncOperation*>(operation);
  sync->status = UnsharedCopy(status);
  sync->done.store(true, std::memory_order_release);
  sync->done.notify_one();
}

void OnSyncExtents(Operation* operation, uint32_t context_id, absl::Span<const Extent> extents) {
  auto* sync = static_cast<SyncOperation*>(operation);
  if (sync->extents != nullptr) {
    sync->extents->emplace_back(context_id, std::vector<Extent>(extents.begin(), extents.end()));
  }
}

}  // namespace

Client::~Client() { Close().IgnoreError(); }

absl::Status Client::Close() {
  if (impl_ == nullptr) return absl::OkStatus();
  Impl& impl = *impl_;
  if (impl.pool == nullptr) return absl::OkStatus();  // Connect failed before the rings
  if (impl.pool->CurrentLoop() != nullptr) {
    return absl::FailedPreconditionError(
        "Client::Close called from a callback (of this client or of another on its rings): "
        "it would wait for the ring running it");
  }
  RingLoop* polled = impl.pool->polled();
  const bool owner_thread = polled != nullptr && polled->on_this_thread();
  if (polled != nullptr && !owner_thread && impl.private_pool) {
    if (impl.closed.load()) return absl::OkStatus();  // closed by its owner: idempotent
    return absl::FailedPreconditionError(
        "Client::Close of a caller-driven client (threads = 0) must run on the thread that "
        "connected it, which turns its ring");
  }
  if (impl.closed.exchange(true)) return absl::OkStatus();
  if (impl.logger != nullptr) impl.logger->Log(LogLevel::kInfo, "closing");
  // A Submit that read `closed` as false is about to hand its operation to a ring; the rings
  // must take it before the group is detached (see Submit). Such a call is a few
  // instructions long.
  while (impl.submits_in_progress.load() != 0) std::this_thread::yield();
  for (Attachment& attachment : impl.attachments) attachment.loop->Detach(attachment.group.get());
  for (Attachment& attachment : impl.attachments) {
    if (owner_thread) {
      // Nobody else turns this ring: drain it here.
      while (!attachment.group->finished_on_loop_thread() && polled->Turn(-1)) {
      }
    } else {
      // Ring threads drain it (or, for a shared caller-driven runtime, its owner's Polls).
      attachment.group->WaitFinished();
    }
    impl.pool->Release(attachment.loop,
                       static_cast<int>(attachment.group->connections.size()));
  }
  if (impl.private_pool) impl.pool->Shutdown();  // no ring thread outlives Close
  impl.ReapChild();
  return absl::OkStatus();
}

int Client::connections() const { return impl_->connection_count; }
int Client::threads() const { return impl_->pool->threads(); }

absl::Status Client::Poll(absl::Duration timeout) {
  if (impl_->closed.load() && impl_->pool->polled() != nullptr) {
    return absl::FailedPreconditionError("the client is closed");
  }
  return impl_->pool->Poll(timeout);
}

int Client::fd() { return impl_->pool->fd(); }

namespace {

void AddConnectionCounters(const Connection& connection, ClientStats* stats) {
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

void AddRingCounters(const RingLoop& loop, ClientStats* stats) {
  const ClientStats ring = loop.RingCounters();
  stats->wakeups += ring.wakeups;
  stats->enters += ring.enters;
  stats->sqes += ring.sqes;
  stats->cqes += ring.cqes;
}

}  // namespace

ClientStats Client::stats() const {
  ClientStats stats;
  for (const Attachment& attachment : impl_->attachments) {
    attachment.group->latency.AddTo(&stats);
    AddRingCounters(*attachment.loop, &stats);
    for (const std::unique_ptr<Connection>& connection : attachment.group->connections) {
      AddConnectionCounters(*connection, &stats);
    }
  }
  return stats;
}

std::vector<ClientStats> Client::connection_stats() const {
  // One ClientStats is about 7 KiB (its histograms): filled in place, in connection order
  // (indexes are 0 .. connections - 1), never copied, so hundreds of connections cost one
  // vector and no more.
  std::vector<ClientStats> stats(static_cast<size_t>(impl_->connection_count));
  for (const Attachment& attachment : impl_->attachments) {
    for (const std::unique_ptr<Connection>& connection : attachment.group->connections) {
      ClientStats& one = stats.at(static_cast<size_t>(connection->index()));
      AddRingCounters(*attachment.loop, &one);
      AddConnectionCounters(*connection, &one);
    }
  }
  return stats;
}

absl::Status Client::Validate(const Operation& operation) const {
  const char* name = nbd::CommandName(operation.command);
  auto refuse_flag = [&](uint16_t flag, const char* flag_name,
                         const char* why) -> absl::Status {
    if ((operation.flags & flag) == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("flag ", flag_name, " refused for ", name,
                                                   ": ", why));
  };
  uint16_t allowed = 0;
  bool needs_range = true;
  bool writes = false;
  switch (operation.command) {
    case Command::kRead:
      allowed = nbd::kCmdFlagDf | nbd::kCmdFlagFua;
      break;
    case Command::kWrite:
      allowed = nbd::kCmdFlagFua;
      writes = true;
      break;
    case Command::kFlush:
      if (!info_.can_flush()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_FLUSH refused: the server does not advertise NBD_FLAG_SEND_FLUSH");
      }
      needs_range = false;
      break;
    case Command::kTrim:
      if (!info_.can_trim()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_TRIM refused: the server does not advertise NBD_FLAG_SEND_TRIM");
      }
      allowed = nbd::kCmdFlagFua;
      writes = true;
      break;
    case Command::kWriteZeroes:
      if (!info_.can_zero()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_WRITE_ZEROES refused: the server does not advertise "
            "NBD_FLAG_SEND_WRITE_ZEROES");
      }
      allowed = nbd::kCmdFlagFua | nbd::kCmdFlagNoHole | nbd::kCmdFlagFastZero;
      writes = true;
      break;
    case Command::kCache:
      if (!info_.can_cache()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_CACHE refused: the server does not advertise NBD_FLAG_SEND_CACHE");
      }
      break;
    case Command::kBlockStatus:
      if (info_.meta_contexts.empty()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_BLOCK_STATUS refused: no meta context was negotiated (set "
            "ClientOptions::meta_contexts, e.g. base:allocation)");
      }
      allowed = nbd::kCmdFlagReqOne;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          name, " (", static_cast<int>(operation.command), ") cannot be submitted"));
  }
  if (writes && info_.read_only()) {
    return absl::FailedPreconditionError(absl::StrCat(name, " refused: the export is read-only"));
  }
  if (uint16_t unknown = operation.flags & ~allowed; unknown != 0) {
    return absl::InvalidArgumentError(absl::StrCat("flags 0x", absl::Hex(unknown),
                                                   " are not valid for ", name));
  }
  absl::Status status = refuse_flag(nbd::kCmdFlagFua, "NBD_CMD_FLAG_FUA",
                                    info_.can_fua() ? "" : "the server does not advertise NBD_FLAG_SEND_FUA");
  if (info_.can_fua()) status = absl::OkStatus();
  if (!status.ok()) return status;
  if (!info_.can_df() || !info_.structured_replies()) {
    status = refuse_flag(nbd::kCmdFlagDf, "NBD_CMD_FLAG_DF",
                         "the server does not advertise NBD_FLAG_SEND_DF with structured replies");
    if (!status.ok()) return status;
  }
  if (!info_.can_fast_zero()) {
    status = refuse_flag(nbd::kCmdFlagFastZero, "NBD_CMD_FLAG_FAST_ZERO",
                         "the server does not advertise NBD_FLAG_SEND_FAST_ZERO");
    if (!status.ok()) return status;
  }
  if (!needs_range) {
    if (operation.offset != 0 || operation.length != 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, " takes no range; got offset ",
                                                     operation.offset, " length ",
                                                     operation.length));
    }
    return absl::OkStatus();
  }
  if (operation.length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, " of length 0 at offset ",
                                                   operation.offset, " is not allowed"));
  }
  if (operation.offset > info_.size || operation.length > info_.size - operation.offset) {
    return absl::OutOfRangeError(absl::StrCat(name, " at offset ", operation.offset, " length ",
                                              operation.length,
                                              " is beyond the end of the export (size ",
                                              info_.size, ")"));
  }
  uint32_t minimum = info_.block_size.minimum;
  if (minimum > 1 && (operation.offset % minimum != 0 || operation.length % minimum != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " at offset ", operation.offset, " length ", operation.length,
        " is not aligned to the server's minimum block size ", minimum));
  }
  if ((operation.command == Command::kRead || operation.command == Command::kWrite) &&
      operation.buffer == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, " needs a buffer"));
  }
  if (operation.on_complete == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, " needs an on_complete callback"));
  }
  return absl::OkStatus();
}

void Client::Cancel(Operation* operation, uint64_t submission_id) {
  if (submission_id == 0 || impl_->closed.load(std::memory_order_acquire)) return;
  // A client is on few rings (default one): asking each is simpler than tracking where the
  // operation went. Each ring compares the id with the submission it holds, so a stale id
  // matches nothing.
  for (const Attachment& attachment : impl_->attachments) {
    attachment.loop->Cancel(operation, submission_id);
  }
}

uint64_t Client::Submit(Operation* operation) {
  const uint64_t submission_id =
      impl_->next_submission_id.fetch_add(1, std::memory_order_relaxed);
  std::atomic_ref<uint64_t>(StateOf(operation).submission).store(submission_id, std::memory_order_release);
  StateOf(operation).next = nullptr;
  StateOf(operation).cancelled = false;
  StateOf(operation).staged_bytes = 0;
  StateOf(operation).parts_outstanding = 0;
  StateOf(operation).fully_staged = false;
  StateOf(operation).waited_for_slot = false;
  StateOf(operation).submitted_ns = MonotonicNanoseconds();
  StateOf(operation).first_error = Validate(*operation);
  if (operation->on_complete == nullptr) return submission_id;  // nothing to tell
  if (Attachment* attachment = impl_->CurrentAttachment();
      attachment != nullptr && !attachment->group->finished_on_loop_thread()) {
    // From a callback on a ring this client has connections on: that ring takes the
    // operation (or, once the client is closing, fails it on its next turn). The hot path of
    // callback-driven I/O: no atomics here.
    StateOf(operation).group = attachment->group.get();
    attachment->loop->Submit(operation);
    return submission_id;
  }
  // Close() sets `closed` and then waits until no Submit is between this check and the hand
  // over below, so an operation either sees `closed` here or reaches a ring that will still
  // take it (both sequentially consistent: the two sides of a Dekker handshake).
  impl_->submits_in_progress.fetch_add(1);
  if (impl_->closed.load()) {
    impl_->submits_in_progress.fetch_sub(1);
    // No ring takes new work any more: the only place left to complete is here.
    operation->on_complete(operation, absl::UnavailableError("the client is closed"));
    return submission_id;
  }
  const uint32_t index = impl_->next_attachment.fetch_add(1, std::memory_order_relaxed) %
                         impl_->attachments.size();
  Attachment& attachment = impl_->attachments[index];
  StateOf(operation).group = attachment.group.get();
  attachment.loop->Submit(operation);
  impl_->submits_in_progress.fetch_sub(1);
  return submission_id;
}

namespace {

void SubmitCallback(Client* client, Command command, uint16_t flags, uint64_t offset,
                    uint64_t length, void* buffer, Client::Callback done,
                    Client::ExtentsCallback extents = nullptr) {
  auto* operation = new CallbackOperation();
  operation->command = command;
  operation->flags = flags;
  operation->offset = offset;
  operation->length = length;
  operation->buffer = buffer;
  operation->done = std::move(done);
  operation->extents = std::move(extents);
  operation->on_complete = &OnCallbackOperationComplete;
  if (operation->extents) operation->on_extents = &OnCallbackOperationExtents;
  client->Submit(operation);
}

}  // namespace

void Client::Pread(void* buffer, uint64_t length, uint64_t offset, Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kRead, flags, offset, length, buffer, std::move(done));
}
void Client::Pwrite(const void* buffer, uint64_t length, uint64_t offset, Callback done,
                    uint16_t flags) {
  SubmitCallback(this, Command::kWrite, flags, offset, length, const_cast<void*>(buffer),
                 std::move(done));
}
void Client::Flush(Callback done) {
  SubmitCallback(this, Command::kFlush, 0, 0, 0, nullptr, std::move(done));
}
void Client::Trim(uint64_t length, uint64_t offset, Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kTrim, flags, offset, length, nullptr, std::move(done));
}
void Client::WriteZeroes(uint64_t length, uint64_t offset, Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kWriteZeroes, flags, offset, length, nullptr, std::move(done));
}
void Client::Cache(uint64_t length, uint64_t offset, Callback done) {
  SubmitCallback(this, Command::kCache, 0, offset, length, nullptr, std::move(done));
}
void Client::BlockStatus(uint64_t length, uint64_t offset, ExtentsCallback extents,
                         Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kBlockStatus, flags, offset, length, nullptr, std::move(done),
                 std::move(extents));
}

namespace {

absl::Status RunSync(Client* client, const SyncCaller& caller, Command command, uint16_t flags,
                     uint64_t offset, uint64_t length, void* buffer,
                     std::vector<std::pair<uint32_t, std::vector<Extent>>>* extents = nullptr) {
  if (caller.in_callback) {
    return absl::FailedPreconditionError(absl::StrCat(
        "synchronous ", nbd::CommandName(command),
        " called from a client callback would wait for itself; use the asynchronous call"));
  }
  SyncOperation operation;
  operation.command = command;
  operation.flags = flags;
  operation.offset = offset;
  operation.length = length;
  operation.buffer = buffer;
  operation.extents = extents;
  operation.on_complete = &OnSyncComplete;
  if (extents != nullptr) operation.on_extents = &OnSyncExtents;
  client->Submit(&operation);
  if (caller.drive != nullptr) {
    // Caller-driven: nobody else turns this loop. A finished loop has completed everything.
    while (!operation.done.load(std::memory_order_acquire) && caller.drive->Turn(-1)) {
    }
  }
  while (!operation.done.load(std::memory_order_acquire)) operation.done.wait(false);
  return operation.status;
}

}  // namespace

absl::Status Client::PreadSync(void* buffer, uint64_t length, uint64_t offset, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kRead, flags, offset, length, buffer);
}
absl::Status Client::PwriteSync(const void* buffer, uint64_t length, uint64_t offset,
                                uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kWrite, flags, offset, length,
                 const_cast<void*>(buffer));
}
absl::Status Client::FlushSync() {
  return RunSync(this, impl_->sync_caller(), Command::kFlush, 0, 0, 0, nullptr);
}
absl::Status Client::TrimSync(uint64_t length, uint64_t offset, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kTrim, flags, offset, length, nullptr);
}
absl::Status Client::WriteZeroesSync(uint64_t length, uint64_t offset, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kWriteZeroes, flags, offset, length,
                 nullptr);
}
absl::Status Client::CacheSync(uint64_t length, uint64_t offset) {
  return RunSync(this, impl_->sync_caller(), Command::kCache, 0, offset, length, nullptr);
}
absl::Status Client::BlockStatusSync(
    uint64_t length, uint64_t offset,
    std::vector<std::pair<uint32_t, std::vector<Extent>>>* extents, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kBlockStatus, flags, offset, length,
                 nullptr, extents);
}

}  // namespace nbdring
