#include "tools/copy/copier.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tools/copy/zero_blocks.h"

namespace nbdcopy {
namespace {

// NBD_CMD_WRITE_ZEROES carries no payload, so one request may cover far more than a read;
// 1 GiB stays well inside the 32-bit length of compact requests.
constexpr uint64_t kMaximumZeroRequest = uint64_t{1} << 30;
constexpr size_t kBufferAlignment = 4096;
// The source is mapped at most this many bytes per query, so a huge disk starts copying at
// once and its map is held a window at a time, not whole.
constexpr uint64_t kMapWindow = uint64_t{1} << 30;
// The planner maps more once fewer mapped bytes than this are left to hand out: far enough
// ahead that slots rarely wait for a block status reply.
constexpr uint64_t kMapLookahead = kMapWindow / 2;

absl::Status ErrnoStatus(int error) {
  // Not absl::ErrnoToStatus: it appends strerror to the message, which would say it twice.
  return absl::Status(absl::ErrnoToStatusCode(error), std::strerror(error));
}

absl::Status PreadFully(int fd, unsigned char* buffer, uint64_t length, uint64_t offset) {
  uint64_t done = 0;
  while (done < length) {
    const ssize_t got = pread(fd, buffer + done, length - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno);
    }
    if (got == 0) {
      return absl::OutOfRangeError(
          absl::StrCat("unexpected end of file at offset ", offset + done));
    }
    done += static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

absl::Status PwriteFully(int fd, const unsigned char* buffer, uint64_t length, uint64_t offset) {
  uint64_t done = 0;
  while (done < length) {
    const ssize_t put =
        pwrite(fd, buffer + done, length - done, static_cast<off_t>(offset + done));
    if (put < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno);
    }
    done += static_cast<uint64_t>(put);
  }
  return absl::OkStatus();
}

absl::Status WriteFully(int fd, const unsigned char* buffer, uint64_t length) {
  uint64_t done = 0;
  while (done < length) {
    const ssize_t put = write(fd, buffer + done, length - done);
    if (put < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno);
    }
    done += static_cast<uint64_t>(put);
  }
  return absl::OkStatus();
}

}  // namespace

struct Copier::Slot {
  enum class Phase { kIdle, kReading, kReadingTail, kWriting };
  Copier* copier = nullptr;
  unsigned char* buffer = nullptr;
  nbdring::Operation operation;
  Phase phase = Phase::kIdle;
  ChunkKind kind = ChunkKind::kCopy;
  uint64_t offset = 0;
  uint64_t length = 0;        // source bytes in buffer
  uint64_t write_length = 0;  // bytes written: length, or up to the next block for a tail
  // -S: the chunk's data and zero-block pieces, written one after another; empty when the
  // chunk is written whole.
  std::vector<Range> pieces;
  size_t next_piece = 0;
};

Copier::Copier(Endpoint* source, Endpoint* destination, const CopyOptions& options)
    : source_(source), destination_(destination), options_(options) {
  for (const Endpoint* endpoint : {source_, destination_}) {
    if (std::optional<uint64_t> maximum = endpoint->maximum_request(); maximum.has_value()) {
      options_.request_size = std::min(options_.request_size, *maximum);
    }
  }
  options_.slots = std::max(options_.slots, 1);

  if (destination_->kind() == EndpointKind::kNull ||
      (!options_.incremental &&
       (options_.destination_is_zero ||
        (destination_->is_regular_file() && !options_.allocated)))) {
    zero_policy_ = ZeroPolicy::kSkip;  // a regular file is emptied first: skipped bytes are holes
  } else if (destination_->kind() == EndpointKind::kNbd &&
             destination_->client()->export_info().can_zero()) {
    zero_policy_ = ZeroPolicy::kZeroCommand;
  } else {
    zero_policy_ = ZeroPolicy::kZeroBuffer;
  }
  const bool source_blocks = source_->kind() == EndpointKind::kFile ||
                             source_->kind() == EndpointKind::kStream;
  const bool destination_blocks = destination_->kind() == EndpointKind::kFile ||
                                  destination_->kind() == EndpointKind::kStream;
  offload_completions_ = source_blocks || destination_blocks;
}

Copier::~Copier() = default;

absl::Status Copier::Plan() {
  if (source_->kind() != EndpointKind::kStream) {
    total_bytes_ = source_->size();
    const std::optional<uint64_t> destination_size = destination_->size();
    // A regular file grows to fit; an export or block device cannot, and a file that should
    // hold the previous copy but is smaller does not.
    if (destination_size.has_value() &&
        (!destination_->is_regular_file() || options_.incremental) &&
        *destination_size < *total_bytes_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "destination ", destination_->spec(), " is smaller than the source: ",
          *destination_size, " bytes, but the source ", source_->spec(), " has ", *total_bytes_,
          " bytes", options_.incremental ? " (it must hold the previous copy)" : "",
          "; nothing was written"));
    }
  }
  absl::StatusOr<uint64_t> alignment = ChunkAlignment();
  if (!alignment.ok()) return alignment.status();
  alignment_ = *alignment;
  options_.request_size = std::max(*alignment, options_.request_size / *alignment * *alignment);
  if (options_.allocated) options_.sparse_block_size = 0;
  options_.sparse_block_size =
      (options_.sparse_block_size + *alignment - 1) / *alignment * *alignment;

  if (total_bytes_.has_value()) {
    uint64_t zero_chunk_limit = UINT64_MAX;  // kSkip: a zero range is passed over whole
    if (zero_policy_ == ZeroPolicy::kZeroCommand) zero_chunk_limit = kMaximumZeroRequest;
    if (zero_policy_ == ZeroPolicy::kZeroBuffer) zero_chunk_limit = options_.request_size;
    // The first window now, so that a source that cannot be mapped fails before any write.
    std::vector<Range> first_window;
    if (*total_bytes_ > 0) {
      absl::StatusOr<std::vector<Range>> ranges = MapWindow(0);
      if (!ranges.ok()) return ranges.status();
      first_window = *std::move(ranges);
    }
    std::lock_guard<std::mutex> lock(plan_mutex_);
    plan_.emplace(*total_bytes_, *alignment, options_.request_size, zero_chunk_limit);
    if (!plan_->fully_described()) {
      if (absl::Status status = plan_->Describe(first_window); !status.ok()) return status;
    }
  }
  // The previous copy is what an incremental copy builds on: it must not be emptied.
  if (options_.incremental) return absl::OkStatus();
  return destination_->PrepareDestination(total_bytes_);
}

absl::StatusOr<uint64_t> Copier::ChunkAlignment() const {
  const Endpoint* strictest =
      source_->minimum_request() >= destination_->minimum_request() ? source_ : destination_;
  const uint64_t alignment = strictest->minimum_request();
  const std::string strictest_name =
      absl::StrCat(SideName(strictest->side()), " ", strictest->spec());
  for (const Endpoint* endpoint : {source_, destination_}) {
    const std::optional<uint64_t> maximum = endpoint->maximum_request();
    if (maximum.has_value() && *maximum < alignment) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the ", alignment, "-byte minimum block size of ", strictest_name, " exceeds the ",
          *maximum, "-byte maximum block size of ", SideName(endpoint->side()), " ",
          endpoint->spec(), "; nothing was written"));
    }
  }
  if (total_bytes_.has_value() && *total_bytes_ % alignment != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "source ", source_->spec(), " has ", *total_bytes_,
        " bytes, which is not a multiple of the ", alignment, "-byte minimum block size of ",
        strictest_name, ": the last ", *total_bytes_ % alignment,
        " bytes cannot be copied with aligned requests; nothing was written"));
  }
  return alignment;
}

absl::StatusOr<std::vector<Range>> Copier::MapWindow(uint64_t offset) const {
  return source_->MapSource(offset, std::min(kMapWindow, *total_bytes_ - offset),
                            options_.use_extents);
}

void Copier::RunPlanner() {
  std::unique_lock<std::mutex> lock(plan_mutex_);
  while (!plan_->fully_described()) {
    plan_wanted_.wait(lock, [this] {
      return planner_stop_ || failed_.load(std::memory_order_acquire) ||
             !waiting_for_map_.empty() || plan_->ready_bytes() < kMapLookahead;
    });
    if (planner_stop_ || failed_.load(std::memory_order_acquire)) break;
    const uint64_t offset = plan_->described_end();
    lock.unlock();
    absl::StatusOr<std::vector<Range>> ranges = MapWindow(offset);
    lock.lock();
    absl::Status status = ranges.ok() ? plan_->Describe(*ranges) : ranges.status();
    if (!status.ok()) {
      lock.unlock();
      std::vector<Pending> ready;
      Fail(std::move(status), &ready);
      for (Pending& pending : ready) Drive(pending.slot, std::move(pending.status));
      lock.lock();
      break;
    }
    if (!waiting_for_map_.empty()) {
      std::vector<Slot*> waiting;
      waiting.swap(waiting_for_map_);
      lock.unlock();
      Resume(std::move(waiting));
      lock.lock();
    }
  }
  // Whoever still waits now finds the map complete, or the copy failed and stops.
  std::vector<Slot*> waiting;
  waiting.swap(waiting_for_map_);
  lock.unlock();
  Resume(std::move(waiting));
}

void Copier::Resume(std::vector<Slot*> slots) {
  for (Slot* slot : slots) Drive(slot, absl::OkStatus());
}

absl::Status Copier::Run(const std::function<void(const CopyProgress&)>& on_tick,
                         absl::Duration tick_interval) {
  if (absl::Status status = Plan(); !status.ok()) return status;

  const size_t slot_count = static_cast<size_t>(options_.slots);
  const size_t buffer_bytes =
      (options_.request_size + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
  buffers_ = {static_cast<unsigned char*>(std::aligned_alloc(kBufferAlignment,
                                                             buffer_bytes * slot_count)),
              std::free};
  if (buffers_ == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", slot_count, " buffers of ", buffer_bytes, " bytes"));
  }
  slots_.clear();
  for (size_t i = 0; i < slot_count; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->copier = this;
    slot->buffer = buffers_.get() + i * buffer_bytes;
    slot->operation.user_data = slot.get();
    slot->operation.on_complete = &Copier::OnOperationComplete;
    slots_.push_back(std::move(slot));
  }
  {
    std::lock_guard<std::mutex> lock(done_mutex_);
    active_slots_ = static_cast<int>(slot_count);
  }
  if (offload_completions_) io_thread_ = std::thread([this] { RunIoThread(); });
  for (const std::unique_ptr<Slot>& slot : slots_) Drive(slot.get(), absl::OkStatus());
  // Started only now, so the first window's requests go out before any further mapping.
  {
    std::lock_guard<std::mutex> lock(plan_mutex_);
    if (plan_.has_value() && !plan_->fully_described()) {
      planner_ = std::thread([this] { RunPlanner(); });
    }
  }

  const auto tick = absl::ToChronoMilliseconds(tick_interval);
  {
    std::unique_lock<std::mutex> lock(done_mutex_);
    while (!Finished()) {
      if (on_tick) {
        if (done_.wait_for(lock, tick, [this] { return Finished(); })) break;
        lock.unlock();
        on_tick(CopyProgress{bytes_done_.load(std::memory_order_relaxed), total_bytes_});
        lock.lock();
      } else {
        done_.wait(lock, [this] { return Finished(); });
      }
    }
  }
  // The last word, even when the copy finished before the first tick.
  if (on_tick) on_tick(CopyProgress{bytes_done_.load(), total_bytes_});
  if (planner_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(plan_mutex_);
      planner_stop_ = true;
    }
    plan_wanted_.notify_all();
    planner_.join();
  }
  if (io_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(io_mutex_);
      io_stop_ = true;
    }
    io_ready_.notify_all();
    io_thread_.join();
  }
  {
    std::lock_guard<std::mutex> lock(done_mutex_);
    if (!first_error_.ok()) {
      // Say how far it got: what the destination holds is good up to there only in
      // aggregate (requests complete out of order), so it is not a resumable offset.
      return absl::Status(first_error_.code(),
                          absl::StrCat(first_error_.message(), " (the copy stopped after ",
                                       bytes_done_.load(), " of ",
                                       total_bytes_.has_value()
                                           ? absl::StrCat(*total_bytes_)
                                           : std::string("an unknown number of"),
                                       " bytes)"));
    }
  }
  if (total_bytes_.has_value() && bytes_done_.load() != *total_bytes_) {
    return absl::InternalError(absl::StrCat("the copy ended after ", bytes_done_.load(),
                                            " of ", *total_bytes_, " bytes"));
  }
  if (options_.flush) return destination_->Flush();
  return absl::OkStatus();
}

void Copier::OnOperationComplete(nbdring::Operation* operation, const absl::Status& status) {
  Slot* slot = static_cast<Slot*>(operation->user_data);
  Copier* copier = slot->copier;
  if (!copier->offload_completions_) {
    copier->Drive(slot, status);
    return;
  }
  std::lock_guard<std::mutex> lock(copier->io_mutex_);
  const bool was_empty = copier->io_queue_.empty();
  copier->io_queue_.push_back(Pending{slot, status});
  // A non-empty queue means the I/O thread is awake or about to look again: no wakeup needed.
  // Notifying under the lock matters: once the I/O thread finishes the last slot, Run() returns
  // and the Copier (with this condition variable) may be gone.
  if (was_empty) copier->io_ready_.notify_one();
}

void Copier::RunIoThread() {
  std::vector<Pending> batch;
  std::unique_lock<std::mutex> lock(io_mutex_);
  while (true) {
    io_ready_.wait(lock, [this] { return io_stop_ || !io_queue_.empty(); });
    if (io_queue_.empty()) return;  // stopping, and nothing left to finish
    batch.swap(io_queue_);
    lock.unlock();
    for (Pending& pending : batch) Drive(pending.slot, std::move(pending.status));
    batch.clear();
    lock.lock();
  }
}

void Copier::Drive(Slot* first, absl::Status status) {
  // Synchronous steps loop here instead of recursing, so a long run of file I/O on one thread
  // never deepens the stack.
  {
    std::lock_guard<std::mutex> lock(done_mutex_);
    ++drives_in_progress_;
  }
  std::vector<Pending> ready;
  ready.push_back(Pending{first, std::move(status)});
  while (!ready.empty()) {
    Pending pending = std::move(ready.back());
    ready.pop_back();
    Advance(pending.slot, std::move(pending.status), &ready);
  }
  // Notifying under the lock: once Run() sees Finished(), the Copier may be destroyed.
  std::lock_guard<std::mutex> lock(done_mutex_);
  if (--drives_in_progress_ == 0 && Finished()) done_.notify_all();
}

void Copier::Advance(Slot* slot, absl::Status status, std::vector<Pending>* ready) {
  using Phase = Slot::Phase;
  while (true) {
    switch (slot->phase) {
      case Phase::kIdle: {
        absl::Status read_status;
        switch (TakeNextChunk(slot, &read_status)) {
          case Taken::kChunk:
            break;
          case Taken::kNothingLeft:
            FinishSlot();
            return;
          case Taken::kWaitingForMap:
            return;  // the planner continues it
        }
        slot->write_length = slot->length;  // longer only for a stream's last partial block
        if (slot->kind == ChunkKind::kZeroCommand) {
          slot->phase = Phase::kWriting;
          if (!StartWrite(slot, &status, ready)) return;
          break;
        }
        slot->phase = Phase::kReading;
        if (slot->kind == ChunkKind::kZeroBuffer) {
          std::memset(slot->buffer, 0, slot->length);
          status = absl::OkStatus();
          break;
        }
        switch (source_->kind()) {
          case EndpointKind::kNbd: {
            nbdring::Operation& operation = slot->operation;
            operation.command = nbdring::Command::kRead;
            operation.flags = 0;
            operation.offset = slot->offset;
            operation.length = slot->length;
            operation.buffer = slot->buffer;
            source_->client()->Submit(&operation);
            return;
          }
          case EndpointKind::kFile:
            status = PreadFully(source_->fd(), slot->buffer, slot->length, slot->offset);
            break;
          case EndpointKind::kStream:
          case EndpointKind::kNull:
            status = std::move(read_status);
            break;
        }
        break;
      }
      case Phase::kReading:
        if (!status.ok()) {
          FailSlot(status,
                   absl::StrCat("reading source ", source_->spec(), " at offset ", slot->offset,
                                " (length ", slot->length, ")"),
                   ready);
          return;
        }
        if (slot->length % alignment_ != 0 && destination_->kind() == EndpointKind::kNbd &&
            slot->offset + slot->length <= *destination_->size()) {
          slot->phase = Phase::kReadingTail;
          StartTailRead(slot);
          return;
        }
        slot->phase = Phase::kWriting;
        if (SplitIntoPieces(slot)) {
          if (!StartNextPiece(slot, &status)) return;
          break;
        }
        if (!StartWrite(slot, &status, ready)) return;
        break;
      case Phase::kReadingTail: {
        const uint64_t kept = (slot->offset + slot->length) % alignment_;
        const uint64_t block_offset = slot->offset + slot->length - kept;
        if (!status.ok()) {
          FailSlot(status,
                   absl::StrCat("the stream ended at offset ", slot->offset + slot->length,
                                ", inside a ", alignment_, "-byte block of destination ",
                                destination_->spec(), "; reading that block at offset ",
                                block_offset, " to complete it"),
                   ready);
          return;
        }
        std::memcpy(slot->buffer + slot->length, tail_block_.data() + kept, alignment_ - kept);
        slot->write_length = slot->length + (alignment_ - kept);
        slot->phase = Phase::kWriting;
        if (!StartWrite(slot, &status, ready)) return;
        break;
      }
      case Phase::kWriting:
        if (!status.ok()) {
          // A split chunk fails in the piece last started.
          const Range failed = slot->next_piece > 0
                                   ? slot->pieces[slot->next_piece - 1]
                                   : Range{slot->offset, slot->length,
                                           slot->kind == ChunkKind::kZeroCommand};
          FailSlot(status,
                   absl::StrCat(failed.zero ? "zeroing" : "writing", " destination ",
                                destination_->spec(), " at offset ", failed.offset, " (length ",
                                failed.length, ")"),
                   ready);
          return;
        }
        if (slot->next_piece < slot->pieces.size()) {
          if (!StartNextPiece(slot, &status)) return;
          break;
        }
        slot->pieces.clear();
        slot->next_piece = 0;
        bytes_done_.fetch_add(slot->length, std::memory_order_relaxed);
        slot->phase = Phase::kIdle;
        break;
    }
  }
}

Copier::Taken Copier::TakeNextChunk(Slot* slot, absl::Status* read_status) {
  std::lock_guard<std::mutex> lock(plan_mutex_);
  if (failed_.load(std::memory_order_acquire)) return Taken::kNothingLeft;
  if (!plan_.has_value()) {  // a stream source
    if (stream_ended_) return Taken::kNothingLeft;
    *read_status = ReadStreamChunk(slot);
    if (read_status->ok() && slot->length == 0) return Taken::kNothingLeft;
    // The first chunk past the end of an export fails in StartWrite. Reading no further
    // keeps it the only one, so the error always names the offset where the export ends.
    if (destination_->kind() == EndpointKind::kNbd &&
        slot->offset + slot->length > *destination_->size()) {
      stream_ended_ = true;
    }
    return Taken::kChunk;
  }
  while (true) {
    const std::optional<Range> chunk = plan_->Next();
    if (!chunk.has_value()) {
      if (plan_->fully_described()) return Taken::kNothingLeft;
      waiting_for_map_.push_back(slot);
      plan_wanted_.notify_one();
      return Taken::kWaitingForMap;
    }
    if (chunk->unchanged || (chunk->zero && zero_policy_ == ZeroPolicy::kSkip)) {
      bytes_done_.fetch_add(chunk->length, std::memory_order_relaxed);
      continue;
    }
    if (!chunk->zero) {
      slot->kind = ChunkKind::kCopy;
    } else if (zero_policy_ == ZeroPolicy::kZeroCommand) {
      slot->kind = ChunkKind::kZeroCommand;
    } else {
      slot->kind = ChunkKind::kZeroBuffer;
    }
    slot->offset = chunk->offset;
    slot->length = chunk->length;
    if (!plan_->fully_described() && plan_->ready_bytes() < kMapLookahead) {
      plan_wanted_.notify_one();
    }
    return Taken::kChunk;
  }
}

absl::Status Copier::ReadStreamChunk(Slot* slot) {
  // Called with plan_mutex_ held: stream bytes are read in order, one chunk at a time.
  slot->kind = ChunkKind::kCopy;
  slot->offset = stream_offset_;
  slot->length = 0;
  while (slot->length < options_.request_size) {
    const ssize_t got = read(source_->fd(), slot->buffer + slot->length,
                             options_.request_size - slot->length);
    if (got < 0) {
      if (errno == EINTR) continue;
      stream_ended_ = true;
      return ErrnoStatus(errno);
    }
    if (got == 0) {
      stream_ended_ = true;
      break;
    }
    slot->length += static_cast<uint64_t>(got);
  }
  stream_offset_ += slot->length;
  return absl::OkStatus();
}

void Copier::StartTailRead(Slot* slot) {
  // Slots' offsets and full chunks are multiples of alignment_, so the chunk starts before
  // the block and the block fits in the buffer (request_size is a multiple of alignment_).
  const uint64_t end = slot->offset + slot->length;
  tail_block_.resize(alignment_);
  nbdring::Operation& operation = slot->operation;
  operation.command = nbdring::Command::kRead;
  operation.flags = 0;
  operation.offset = end - end % alignment_;
  operation.length = alignment_;
  operation.buffer = tail_block_.data();
  destination_->client()->Submit(&operation);
}

bool Copier::StartWrite(Slot* slot, absl::Status* status, std::vector<Pending>* ready) {
  switch (destination_->kind()) {
    case EndpointKind::kNbd: {
      const uint64_t size = *destination_->size();
      if (slot->offset + slot->length > size) {
        // Only a stream source can get here: its size was not known in advance.
        *status = absl::OutOfRangeError(absl::StrCat(
            "the source is larger than the destination (", size, " bytes)"));
        return true;
      }
      nbdring::Operation& operation = slot->operation;
      operation.command = slot->kind == ChunkKind::kZeroCommand ? nbdring::Command::kWriteZeroes
                                                                : nbdring::Command::kWrite;
      operation.flags = slot->kind == ChunkKind::kZeroCommand ? ZeroCommandFlags() : 0;
      operation.offset = slot->offset;
      operation.length = slot->write_length;
      operation.buffer = slot->kind == ChunkKind::kZeroCommand ? nullptr : slot->buffer;
      destination_->client()->Submit(&operation);
      return false;
    }
    case EndpointKind::kFile:
      *status = PwriteFully(destination_->fd(), slot->buffer, slot->length, slot->offset);
      return true;
    case EndpointKind::kStream:
      return WriteInOrder(slot, status, ready);
    case EndpointKind::kNull:
      *status = absl::OkStatus();
      return true;
  }
  return true;
}

uint16_t Copier::ZeroCommandFlags() const {
  return options_.allocated ? nbd::kCmdFlagNoHole : 0;
}

bool Copier::SplitIntoPieces(Slot* slot) const {
  // Zero buffers would carry the same bytes as the data; a stream keeps its own order; a
  // stream's last partial block is written whole.
  if (options_.sparse_block_size == 0 || slot->kind != ChunkKind::kCopy ||
      zero_policy_ == ZeroPolicy::kZeroBuffer || slot->write_length != slot->length ||
      (destination_->kind() != EndpointKind::kNbd && destination_->kind() != EndpointKind::kFile)) {
    return false;
  }
  std::vector<Range> pieces =
      SplitZeroBlocks(slot->buffer, slot->offset, slot->length, options_.sparse_block_size);
  if (pieces.size() == 1 && !pieces.front().zero) return false;
  slot->pieces = std::move(pieces);
  slot->next_piece = 0;
  return true;
}

bool Copier::StartNextPiece(Slot* slot, absl::Status* status) {
  while (slot->next_piece < slot->pieces.size()) {
    const Range piece = slot->pieces[slot->next_piece++];
    if (piece.zero && zero_policy_ == ZeroPolicy::kSkip) continue;
    unsigned char* bytes = slot->buffer + (piece.offset - slot->offset);
    if (destination_->kind() == EndpointKind::kFile) {
      // Zero pieces reach a file only when skipped: kZeroBuffer never splits.
      *status = PwriteFully(destination_->fd(), bytes, piece.length, piece.offset);
      if (!status->ok()) return true;
      continue;
    }
    nbdring::Operation& operation = slot->operation;
    operation.command = piece.zero ? nbdring::Command::kWriteZeroes : nbdring::Command::kWrite;
    operation.flags = piece.zero ? ZeroCommandFlags() : 0;
    operation.offset = piece.offset;
    operation.length = piece.length;
    operation.buffer = piece.zero ? nullptr : bytes;
    destination_->client()->Submit(&operation);
    return false;
  }
  *status = absl::OkStatus();
  return true;
}

bool Copier::WriteInOrder(Slot* slot, absl::Status* status, std::vector<Pending>* ready) {
  std::lock_guard<std::mutex> lock(order_mutex_);
  if (failed_.load(std::memory_order_acquire)) {
    *status = absl::AbortedError("stopped after an earlier error");
    return true;
  }
  if (slot->offset != next_stream_write_) {
    parked_.emplace(slot->offset, slot);
    return false;
  }
  *status = WriteFully(destination_->fd(), slot->buffer, slot->length);
  if (!status->ok()) return true;
  next_stream_write_ += slot->length;
  // Slots that finished reading early were waiting for exactly this.
  while (!parked_.empty() && parked_.begin()->first == next_stream_write_) {
    Slot* next = parked_.begin()->second;
    parked_.erase(parked_.begin());
    absl::Status written = WriteFully(destination_->fd(), next->buffer, next->length);
    const bool ok = written.ok();
    ready->push_back(Pending{next, std::move(written)});
    if (!ok) break;
    next_stream_write_ += next->length;
  }
  return true;
}

void Copier::Fail(absl::Status status, std::vector<Pending>* ready) {
  {
    std::lock_guard<std::mutex> lock(done_mutex_);
    if (first_error_.ok()) first_error_ = std::move(status);
  }
  failed_.store(true, std::memory_order_release);
  {
    // Parked stream writes wait for bytes that will now never come: hand them back as stopped.
    std::lock_guard<std::mutex> lock(order_mutex_);
    for (const auto& [offset, slot] : parked_) {
      ready->push_back(Pending{slot, absl::AbortedError("stopped after an earlier error")});
    }
    parked_.clear();
  }
  // The planner stops mapping and hands back the slots that wait for the map. Notifying under
  // the lock orders this wakeup after any slot that parked before failed_ was set.
  std::lock_guard<std::mutex> lock(plan_mutex_);
  plan_wanted_.notify_all();
}

void Copier::FailSlot(const absl::Status& cause, absl::string_view step,
                      std::vector<Pending>* ready) {
  Fail(absl::Status(cause.code(), absl::StrCat(step, " failed: ", cause.message())), ready);
  FinishSlot();
}

void Copier::FinishSlot() {
  std::lock_guard<std::mutex> lock(done_mutex_);
  if (--active_slots_ == 0 && Finished()) done_.notify_all();
}

bool Copier::Finished() const { return active_slots_ == 0 && drives_in_progress_ == 0; }

}  // namespace nbdcopy
