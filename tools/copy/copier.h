// tools/copy/copier.h — moves every byte of a source endpoint to a destination endpoint.
//
// A fixed pool of slots, each owning one buffer and one nbdring::Operation, is allocated once.
// A slot takes the next chunk of the plan (a CopyPlan), reads it from the source into its
// buffer, writes the same buffer to the destination, and takes the next chunk. NBD steps are
// submitted with Client::Submit. When both sides are NBD (or the destination is null:) a slot
// continues in on_complete on the ring thread; when a file or stream is involved, completions
// are handed to one I/O thread, because ring callbacks must not block and a ring busy writing a
// file would hold back the requests that keep the server busy. Chunks the source reports as
// zero are not read: the destination gets NBD_CMD_WRITE_ZEROES, a hole (a truncated regular
// file), zero buffers, or nothing at all (--destination-is-zero, null:). Data read is checked
// for whole blocks of zeroes (-S), which then go the same way as zero ranges: a slot writes
// its chunk as several pieces. --allocated writes every zero (no holes, no -S). An incremental
// copy (--dirty-bitmap) passes over the chunks its source maps as unchanged, counting them as
// done, and zeroes the destination's dirty zero ranges instead of making holes.
//
// The source is mapped lazily, one window (up to 1 GiB) at a time: Run() maps the first window
// before any slot starts, and a planner thread maps the next ones while the copy runs, staying
// a bounded distance ahead of the slots. A slot that finds nothing mapped yet waits for the
// planner, which continues it. Chunks are aligned to the larger NBD minimum block size of the
// two sides; a source whose size cannot be cut into such chunks is refused before any write.
// A stream's size is learnt only at its end: a last chunk that ends inside a destination block
// is completed with the destination's own bytes (read, then written back whole), so the bytes
// past the stream keep their contents.
//
// Every completion is checked. The first failure stops the copy; Run() then returns an error
// naming the side, the offset and the server's (or the system's) message, once no request is
// in flight and no thread of the copy is still inside a call on either endpoint. Run() returns
// OK only when every byte of the source was written to the destination (and flushed when
// asked).
#ifndef NBDRING_TOOLS_COPY_COPIER_H_
#define NBDRING_TOOLS_COPY_COPIER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "tools/copy/copy_plan.h"
#include "tools/copy/endpoint.h"

namespace nbdcopy {

struct CopyOptions {
  uint64_t request_size = 256 * 1024;
  int slots = 64;                    // buffers / requests in flight across all connections
  bool destination_is_zero = false;  // zero ranges need not be written at all
  bool use_extents = true;
  bool flush = false;
  // Every zero range is written: zero buffers to files, NBD_CMD_WRITE_ZEROES with
  // NBD_CMD_FLAG_NO_HOLE to exports; no holes are made and -S is off.
  bool allocated = false;
  // -S: whole blocks of this many zero bytes in data read from the source are treated like
  // zero ranges (skipped, or sent as NBD_CMD_WRITE_ZEROES); 0 turns the check off. Rounded up
  // to a multiple of the chunk alignment.
  uint64_t sparse_block_size = 4096;
  // --dirty-bitmap: the destination already holds the previous copy of the source and only
  // what changed since is written. It is not emptied, must be at least as large as the
  // source, and the zero ranges the source reports are written (a skipped range would keep
  // the old bytes); the source's unchanged ranges are skipped.
  bool incremental = false;
};

// How far a running copy has got, for the progress line.
struct CopyProgress {
  uint64_t bytes_done = 0;
  std::optional<uint64_t> total_bytes;  // absent when the source is a stream
};

class Copier {
 public:
  Copier(Endpoint* source, Endpoint* destination, const CopyOptions& options);
  ~Copier();

  // Copies everything. `on_tick` (optional) is called from the calling thread about every
  // `tick_interval` while the copy runs, and once more at the end.
  absl::Status Run(const std::function<void(const CopyProgress&)>& on_tick,
                   absl::Duration tick_interval);

  Copier(const Copier&) = delete;
  Copier& operator=(const Copier&) = delete;

 private:
  struct Slot;
  enum class ChunkKind { kCopy, kZeroCommand, kZeroBuffer };
  enum class ZeroPolicy { kSkip, kZeroCommand, kZeroBuffer };
  enum class Taken { kChunk, kNothingLeft, kWaitingForMap };
  struct Pending {  // a slot whose step just finished with `status`
    Slot* slot;
    absl::Status status;
  };

  absl::Status Plan();
  // Checks the block size constraints of both sides; returns the alignment chunks need.
  absl::StatusOr<uint64_t> ChunkAlignment() const;
  // Maps the window of the source that starts at `offset`; called without plan_mutex_ held,
  // since an NBD source answers over the network.
  absl::StatusOr<std::vector<Range>> MapWindow(uint64_t offset) const;
  void RunPlanner();
  // Continues `slots` (which waited for the map) from the calling thread.
  void Resume(std::vector<Slot*> slots);
  void RunIoThread();
  static void OnOperationComplete(nbdring::Operation* operation, const absl::Status& status);
  // Runs `first` and every slot it unblocks until each waits on the network or is finished.
  void Drive(Slot* first, absl::Status status);
  void Advance(Slot* slot, absl::Status status, std::vector<Pending>* ready);
  // Gives `slot` its next chunk (reading it, for a stream source). When nothing is mapped yet,
  // parks `slot` for the planner to continue.
  Taken TakeNextChunk(Slot* slot, absl::Status* read_status);
  absl::Status ReadStreamChunk(Slot* slot);
  // A stream's last chunk ends inside a destination block: reads that block into tail_block_.
  void StartTailRead(Slot* slot);
  // Starts the destination write; returns true when it completed synchronously.
  bool StartWrite(Slot* slot, absl::Status* status, std::vector<Pending>* ready);
  // -S: splits a chunk just read into pieces of data and of zero blocks; false when there is
  // nothing to gain (no zero block, or a destination that would be sent the zeroes anyway).
  bool SplitIntoPieces(Slot* slot) const;
  // Writes the slot's pieces from the next one on, skipping the zero pieces the destination
  // need not get; returns true when all are done (or one failed) synchronously.
  bool StartNextPiece(Slot* slot, absl::Status* status);
  uint16_t ZeroCommandFlags() const;
  absl::Status WriteToFile(Slot* slot);
  // Streams: writes slots in offset order; returns true if `slot` itself was written.
  bool WriteInOrder(Slot* slot, absl::Status* status, std::vector<Pending>* ready);
  void Fail(absl::Status status, std::vector<Pending>* ready);
  // Fails the copy with "<step> failed: <cause>" (keeping the cause's code); `slot` is done.
  void FailSlot(const absl::Status& cause, absl::string_view step, std::vector<Pending>* ready);
  void FinishSlot();
  bool Finished() const;  // requires done_mutex_

  Endpoint* const source_;
  Endpoint* const destination_;
  CopyOptions options_;
  ZeroPolicy zero_policy_ = ZeroPolicy::kSkip;
  uint64_t alignment_ = 1;  // every request's offset and length are multiples of this
  // The destination's block that a stream's last chunk ends inside (at most one per copy).
  std::vector<unsigned char> tail_block_;
  std::optional<uint64_t> total_bytes_;

  std::vector<std::unique_ptr<Slot>> slots_;
  std::unique_ptr<unsigned char[], void (*)(void*)> buffers_{nullptr, nullptr};

  // The plan: guarded by plan_mutex_ (a stream source is also read under it, to keep order).
  std::mutex plan_mutex_;
  std::optional<CopyPlan> plan_;  // absent for a stream source
  std::vector<Slot*> waiting_for_map_;
  bool planner_stop_ = false;
  std::condition_variable plan_wanted_;  // the planner waits here for a reason to map more
  uint64_t stream_offset_ = 0;           // stream sources: bytes read so far
  bool stream_ended_ = false;
  // Maps the source beyond the first window; started and joined by Run().
  std::thread planner_;

  // Stream destinations: finished reads wait here until every earlier byte is written.
  std::mutex order_mutex_;
  std::map<uint64_t, Slot*> parked_;
  uint64_t next_stream_write_ = 0;

  // NBD completions that continue with blocking file or stream I/O wait here for io_thread_.
  bool offload_completions_ = false;
  std::thread io_thread_;
  std::mutex io_mutex_;
  std::condition_variable io_ready_;
  std::vector<Pending> io_queue_;  // guarded by io_mutex_
  bool io_stop_ = false;           // guarded by io_mutex_

  std::atomic<bool> failed_{false};
  std::atomic<uint64_t> bytes_done_{0};
  std::mutex done_mutex_;
  std::condition_variable done_;
  int active_slots_ = 0;  // guarded by done_mutex_
  // Threads inside Drive(). A slot's last completion can arrive on the destination's ring
  // thread while the thread that submitted it is still returning from Client::Submit, so
  // "every slot finished" alone would let Run() return (and the caller destroy the clients)
  // under a thread still using one. Run() waits for both counts to reach zero.
  int drives_in_progress_ = 0;  // guarded by done_mutex_
  absl::Status first_error_;  // guarded by done_mutex_
};

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_COPIER_H_
