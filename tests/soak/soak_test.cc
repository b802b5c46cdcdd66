// Soak: a million mixed requests (reads, writes, some trims, write-zeroes, flushes and block
// status; 512 B to 256 KiB) from two submitting threads through four connections on two ring
// threads, against nbdkit's memory plugin behind the error filter injecting NBD_EIO into 1% of
// requests. The test keeps a shadow model of the export and holds the client to its promises:
//   * every submitted request completes exactly once (none lost, none twice);
//   * every successful read returns exactly what the model says the export holds;
//   * the only failures are the injected ones, and there are some.
//
// The model: each 4 KiB block has a generation; its bytes are a fixed function of (block,
// generation), generation 0 being zeroes (how the export starts, and what trim and
// write-zeroes leave in the memory plugin). Writes, trims and write-zeroes cover whole blocks
// and go only to blocks with nothing else in flight; reads (any 512 B-aligned range) only
// avoid blocks being written. A failed write leaves its blocks "unknown" — the server may or
// may not have changed them — until a later write to them succeeds; reads do not check unknown
// blocks. At the end every unknown block is rewritten and the whole export is read back.
//
// NBDRING_SOAK_REQUESTS overrides the request count (default 1,000,000; 100,000 under ASan or
// TSan, which slow everything down several times; at least 10,000).
#include <signal.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NBDRING_SOAK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NBDRING_SOAK_SANITIZED 1
#endif
#endif

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbdring::testing::CompletionTracker;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kExportSize = 256 * kMiB;
constexpr uint64_t kBlockSize = 4 * kKiB;
constexpr uint32_t kBlocks = kExportSize / kBlockSize;
constexpr uint64_t kSectorSize = 512;
constexpr uint64_t kMaxRequestBytes = 256 * kKiB;
// A 512 B-aligned read of up to 256 KiB touches at most this many blocks.
constexpr uint32_t kMaxBlocksPerRequest = kMaxRequestBytes / kBlockSize + 1;
constexpr uint32_t kUnknownGeneration = UINT32_MAX;

constexpr int kConnections = 4;
constexpr int kRingThreads = 2;
constexpr uint32_t kInflightLimit = 64;
constexpr int kSubmitters = 2;
// Together the submitters keep every in-flight slot of every connection busy.
constexpr int kWindowPerSubmitter = kConnections * kInflightLimit / kSubmitters;

// Enough for the 1% injection to hit both reads and writes many times over.
constexpr uint64_t kMinimumRequests = 10'000;

uint64_t RequestCount() {
  if (const char* text = std::getenv("NBDRING_SOAK_REQUESTS"); text != nullptr) {
    uint64_t count = 0;
    if (absl::SimpleAtoi(text, &count) && count >= kMinimumRequests) return count;
    ADD_FAILURE() << "NBDRING_SOAK_REQUESTS must be a number of at least " << kMinimumRequests
                  << ", got '" << text << "'";
  }
#ifdef NBDRING_SOAK_SANITIZED
  return 100'000;
#else
  return 1'000'000;
#endif
}

uint64_t Mix(uint64_t value) {
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9;
  value = (value ^ (value >> 27)) * 0x94d049bb133111eb;
  return value ^ (value >> 31);
}

// The 4 KiB a block holds at `generation`.
void FillBlock(uint32_t block, uint32_t generation, uint8_t* out) {
  if (generation == 0) {
    std::memset(out, 0, kBlockSize);
    return;
  }
  uint64_t state = Mix((uint64_t{block} << 32) | generation);
  for (uint64_t word = 0; word < kBlockSize / 8; ++word) {
    state += 0x9e3779b97f4a7c15;
    const uint64_t value = Mix(state);
    std::memcpy(out + 8 * word, &value, 8);
  }
}

enum class Kind { kRead, kWrite, kRepairWrite, kTrim, kWriteZeroes, kFlush, kBlockStatus };
constexpr int kKinds = 7;
const char* const kKindNames[kKinds] = {"read",         "write", "repair write", "trim",
                                        "write zeroes", "flush", "block status"};

struct Submitter;
class Soak;

// One reusable in-flight slot of a submitter: a caller-owned Operation plus what the test
// needs to judge its completion.
struct SoakRequest : Operation {
  // Set before Submit, cleared by the first completion: a second completion (which the
  // tracker reports) finds it clear and must not free the slot again.
  std::atomic<bool> in_flight{false};
  Submitter* owner = nullptr;
  int slot = 0;
  Kind kind = Kind::kFlush;
  uint32_t first_block = 0;
  uint32_t block_count = 0;
  uint32_t generation = 0;  // writes: what the blocks hold if the write succeeds
  // Reads: the generation of each touched block when the read was issued (kUnknownGeneration
  // for blocks the model cannot vouch for). No write can change them while the read is out.
  std::array<uint32_t, kMaxBlocksPerRequest> expected{};
  std::unique_ptr<uint8_t[]> data = std::make_unique<uint8_t[]>(kMaxRequestBytes);
  uint64_t extent_bytes = 0;  // block status: bytes described by the extents received
};

struct Submitter {
  std::mutex mutex;
  std::condition_variable slot_freed;
  std::vector<int> free_slots;
  std::vector<std::unique_ptr<SoakRequest>> requests;
  uint64_t submitted = 0;
};

struct Block {
  uint32_t generation = 0;
  bool known = true;
  bool being_written = false;
  bool queued_for_repair = false;
  uint16_t readers = 0;
};

class Soak {
 public:
  explicit Soak(Client* client) : client_(client), blocks_(kBlocks) {}

  // Issues `count` requests from this thread through the submitter's slots and waits for all
  // of them to complete; gives up when no request completes for `drain_timeout`.
  void RunSubmitter(Submitter* submitter, uint64_t count, uint64_t seed,
                    absl::Duration drain_timeout) {
    std::mt19937_64 random(seed);
    for (int slot = 0; slot < kWindowPerSubmitter; ++slot) {
      auto request = std::make_unique<SoakRequest>();
      request->owner = submitter;
      request->slot = slot;
      request->on_extents = &Soak::OnExtents;
      submitter->requests.push_back(std::move(request));
      submitter->free_slots.push_back(slot);
    }
    while (submitter->submitted < count) {
      int slot;
      {
        std::unique_lock lock(submitter->mutex);
        if (!submitter->slot_freed.wait_for(lock, absl::ToChronoSeconds(drain_timeout),
                                            [&] { return !submitter->free_slots.empty(); })) {
          ADD_FAILURE() << "none of " << kWindowPerSubmitter
                        << " requests in flight completed within " << drain_timeout
                        << "; stopped after " << submitter->submitted;
          return;
        }
        slot = submitter->free_slots.back();
        submitter->free_slots.pop_back();
      }
      SoakRequest& request = *submitter->requests[slot];
      Plan(request, random);
      if (request.kind == Kind::kWrite || request.kind == Kind::kRepairWrite) {
        for (uint32_t i = 0; i < request.block_count; ++i) {
          FillBlock(request.first_block + i, request.generation,
                    request.data.get() + i * kBlockSize);
        }
      }
      request.in_flight.store(true, std::memory_order_release);
      ++submitter->submitted;
      submitted_by_kind_[static_cast<int>(request.kind)].fetch_add(1, std::memory_order_relaxed);
      tracker_.Submit(*client_, &request);
    }
    std::unique_lock lock(submitter->mutex);
    submitter->slot_freed.wait_for(lock, absl::ToChronoSeconds(drain_timeout), [&] {
      return submitter->free_slots.size() == static_cast<size_t>(kWindowPerSubmitter);
    });
  }

  // Rewrites every block a failed write left unknown, retrying through injected errors.
  void RepairUnknownBlocks() {
    std::vector<uint8_t> content(kBlockSize);
    for (uint32_t block = 0; block < kBlocks; ++block) {
      if (blocks_[block].known) continue;
      const uint32_t generation = next_generation_++;
      FillBlock(block, generation, content.data());
      absl::Status status;
      for (int attempt = 0; attempt < 20; ++attempt) {
        status = client_->PwriteSync(content.data(), kBlockSize, block * kBlockSize);
        if (status.ok()) break;
        ASSERT_TRUE(IsInjected(status)) << status;
      }
      ASSERT_TRUE(status.ok()) << "repairing block " << block << ": " << status;
      blocks_[block].generation = generation;
      blocks_[block].known = true;
      ++final_repairs_;
    }
  }

  // Reads the whole export back (1 MiB at a time, retrying through injected errors) and
  // compares every block with the model.
  void VerifyWholeExport() {
    constexpr uint64_t kChunk = 1 * kMiB;
    std::vector<uint8_t> data(kChunk);
    std::vector<uint8_t> expected(kBlockSize);
    uint64_t mismatched_blocks = 0;
    for (uint64_t offset = 0; offset < kExportSize; offset += kChunk) {
      absl::Status status;
      for (int attempt = 0; attempt < 20; ++attempt) {
        status = client_->PreadSync(data.data(), kChunk, offset);
        if (status.ok()) break;
        ASSERT_TRUE(IsInjected(status)) << status;
      }
      ASSERT_TRUE(status.ok()) << "reading back offset " << offset << ": " << status;
      for (uint64_t within = 0; within < kChunk; within += kBlockSize) {
        const uint32_t block = static_cast<uint32_t>((offset + within) / kBlockSize);
        FillBlock(block, blocks_[block].generation, expected.data());
        if (std::memcmp(expected.data(), data.data() + within, kBlockSize) != 0) {
          if (++mismatched_blocks <= 5) {
            ADD_FAILURE() << "read-back of block " << block << " differs from generation "
                          << blocks_[block].generation;
          }
        }
      }
    }
    EXPECT_EQ(mismatched_blocks, 0u);
  }

  const CompletionTracker& tracker() const { return tracker_; }
  uint64_t corrupted_reads() const { return corrupted_reads_.load(); }
  uint64_t verified_bytes() const { return verified_bytes_.load(); }
  uint64_t unexpected_failures() const { return unexpected_failures_.load(); }
  uint64_t bad_extents() const { return bad_extents_.load(); }
  uint64_t final_repairs() const { return final_repairs_; }
  uint64_t submitted(Kind kind) const { return submitted_by_kind_[static_cast<int>(kind)]; }
  uint64_t failed(Kind kind) const { return failed_by_kind_[static_cast<int>(kind)]; }
  std::string first_problem() const {
    std::lock_guard lock(problem_mutex_);
    return first_problem_;
  }

  // The error filter's injected failure: NBD_EIO, which the client reports as DataLoss.
  static bool IsInjected(const absl::Status& status) {
    return status.code() == absl::StatusCode::kDataLoss &&
           absl::StrContains(status.message(), "server replied NBD_EIO");
  }

 private:
  // Chooses what `request` does next and reserves its blocks in the model.
  void Plan(SoakRequest& request, std::mt19937_64& random) {
    Operation& operation = request;
    operation.flags = 0;
    operation.buffer = nullptr;
    request.extent_bytes = 0;
    std::lock_guard lock(model_mutex_);
    if (PlanRepair(request)) return;
    const uint64_t dice = random() % 100;
    Kind kind = dice < 62   ? Kind::kRead
                : dice < 90 ? Kind::kWrite
                : dice < 93 ? Kind::kTrim
                : dice < 96 ? Kind::kWriteZeroes
                : dice < 98 ? Kind::kFlush
                            : Kind::kBlockStatus;
    if (kind == Kind::kFlush) {
      PlanFlush(request);
      return;
    }
    const bool whole_blocks = kind != Kind::kRead && kind != Kind::kBlockStatus;
    const uint64_t unit = whole_blocks ? kBlockSize : kSectorSize;
    // Mostly small requests, as a block device sees them, with a tail up to 256 KiB.
    const uint64_t size_class = random() % 100;
    const uint64_t longest = size_class < 80   ? 8 * kKiB
                             : size_class < 98 ? 64 * kKiB
                                               : kMaxRequestBytes;
    const uint64_t length = (1 + random() % (longest / unit)) * unit;
    for (int attempt = 0; attempt < 8; ++attempt) {
      const uint64_t offset = (random() % ((kExportSize - length) / unit + 1)) * unit;
      const uint32_t first = static_cast<uint32_t>(offset / kBlockSize);
      const uint32_t count = static_cast<uint32_t>((offset + length - 1) / kBlockSize) - first + 1;
      if (kind == Kind::kBlockStatus) {
        // Reads no data: overlapping writes do not matter.
      } else if (!Available(first, count, whole_blocks)) {
        continue;
      }
      request.kind = kind;
      request.first_block = first;
      request.block_count = count;
      operation.offset = offset;
      operation.length = length;
      switch (kind) {
        case Kind::kRead:
          operation.command = Command::kRead;
          operation.buffer = request.data.get();
          for (uint32_t i = 0; i < count; ++i) {
            Block& block = blocks_[first + i];
            ++block.readers;
            request.expected[i] = block.known ? block.generation : kUnknownGeneration;
          }
          break;
        case Kind::kBlockStatus:
          operation.command = Command::kBlockStatus;
          break;
        default:
          operation.command = kind == Kind::kWrite  ? Command::kWrite
                              : kind == Kind::kTrim ? Command::kTrim
                                                    : Command::kWriteZeroes;
          if (kind == Kind::kWrite) operation.buffer = request.data.get();
          request.generation = kind == Kind::kWrite ? next_generation_++ : 0;
          for (uint32_t i = 0; i < count; ++i) blocks_[first + i].being_written = true;
          break;
      }
      return;
    }
    PlanFlush(request);  // everywhere we looked was busy: something that needs no blocks
  }

  // Holding model_mutex_: a write of one block a failed write left unknown, if one is free.
  bool PlanRepair(SoakRequest& request) {
    for (size_t tries = repair_queue_.size(); tries > 0; --tries) {
      const uint32_t block = repair_queue_.front();
      repair_queue_.pop_front();
      if (blocks_[block].known) {
        blocks_[block].queued_for_repair = false;  // a later write already settled it
        continue;
      }
      if (!Available(block, 1, /*exclusive=*/true)) {
        repair_queue_.push_back(block);
        continue;
      }
      blocks_[block].queued_for_repair = false;
      blocks_[block].being_written = true;
      request.kind = Kind::kRepairWrite;
      request.first_block = block;
      request.block_count = 1;
      request.generation = next_generation_++;
      request.command = Command::kWrite;
      request.offset = block * kBlockSize;
      request.length = kBlockSize;
      request.buffer = request.data.get();
      return true;
    }
    return false;
  }

  void PlanFlush(SoakRequest& request) {
    request.kind = Kind::kFlush;
    request.block_count = 0;
    request.command = Command::kFlush;
    request.offset = 0;
    request.length = 0;
  }

  // Holding model_mutex_: whether blocks [first, first + count) can take a read (no write in
  // flight) or, if `exclusive`, a write (nothing in flight).
  bool Available(uint32_t first, uint32_t count, bool exclusive) const {
    for (uint32_t i = first; i < first + count; ++i) {
      if (blocks_[i].being_written || (exclusive && blocks_[i].readers > 0)) return false;
    }
    return true;
  }

  static void OnExtents(Operation* operation, uint32_t, absl::Span<const Extent> extents) {
    auto* request = static_cast<SoakRequest*>(operation);
    for (const Extent& extent : extents) request->extent_bytes += extent.length;
  }

  // The tracker's hook: runs after the tracker counted the completion.
  void OnComplete(Operation* operation, const absl::Status& status) {
    auto* request = static_cast<SoakRequest*>(operation);
    if (!request->in_flight.exchange(false, std::memory_order_acq_rel)) {
      NoteProblem(absl::StrCat("second completion of a ",
                               kKindNames[static_cast<int>(request->kind)], " at offset ",
                               operation->offset, " with ", status.ToString()));
      return;
    }
    if (!status.ok()) {
      failed_by_kind_[static_cast<int>(request->kind)].fetch_add(1, std::memory_order_relaxed);
      if (!IsInjected(status)) {
        unexpected_failures_.fetch_add(1, std::memory_order_relaxed);
        NoteProblem(absl::StrCat("unexpected failure of a ",
                                 kKindNames[static_cast<int>(request->kind)], ": ",
                                 status.ToString()));
      }
    } else if (request->kind == Kind::kRead) {
      CheckRead(*request);
    } else if (request->kind == Kind::kBlockStatus && request->extent_bytes == 0) {
      // The server must describe at least a prefix of the range it was asked about.
      bad_extents_.fetch_add(1, std::memory_order_relaxed);
      NoteProblem(absl::StrCat("block status at offset ", operation->offset, " length ",
                               operation->length, " succeeded without extents"));
    }
    Settle(*request, status.ok());
    Submitter& owner = *request->owner;
    const int slot = request->slot;
    // Last: once the slot is free the submitter may reuse `request`.
    std::lock_guard lock(owner.mutex);
    owner.free_slots.push_back(slot);
    owner.slot_freed.notify_one();
  }

  void CheckRead(const SoakRequest& request) {
    const Operation& operation = request;
    std::array<uint8_t, kBlockSize> expected;
    for (uint32_t i = 0; i < request.block_count; ++i) {
      if (request.expected[i] == kUnknownGeneration) continue;
      const uint32_t block = request.first_block + i;
      const uint64_t block_start = block * kBlockSize;
      const uint64_t begin = std::max(block_start, operation.offset);
      const uint64_t end = std::min(block_start + kBlockSize, operation.offset + operation.length);
      FillBlock(block, request.expected[i], expected.data());
      const uint8_t* want = expected.data() + (begin - block_start);
      const uint8_t* got = request.data.get() + (begin - operation.offset);
      if (std::memcmp(want, got, end - begin) != 0) {
        corrupted_reads_.fetch_add(1, std::memory_order_relaxed);
        uint64_t at = 0;
        while (want[at] == got[at]) ++at;
        NoteProblem(absl::StrFormat(
            "read at offset %d length %d: byte %d of block %d (generation %d) is 0x%02x, "
            "expected 0x%02x",
            operation.offset, operation.length, begin - block_start + at, block,
            request.expected[i], got[at], want[at]));
        return;
      }
      verified_bytes_.fetch_add(end - begin, std::memory_order_relaxed);
    }
  }

  // Releases the request's blocks and records what they hold now.
  void Settle(const SoakRequest& request, bool succeeded) {
    std::lock_guard lock(model_mutex_);
    for (uint32_t i = 0; i < request.block_count; ++i) {
      const uint32_t index = request.first_block + i;
      Block& block = blocks_[index];
      switch (request.kind) {
        case Kind::kRead:
          --block.readers;
          break;
        case Kind::kWrite:
        case Kind::kRepairWrite:
        case Kind::kTrim:
        case Kind::kWriteZeroes:
          block.being_written = false;
          if (succeeded) {
            block.generation = request.generation;
            block.known = true;
          } else {
            // The server may have changed none, some or all of the range.
            block.known = false;
            if (!block.queued_for_repair) {
              block.queued_for_repair = true;
              repair_queue_.push_back(index);
            }
          }
          break;
        case Kind::kFlush:
        case Kind::kBlockStatus:
          break;
      }
    }
  }

  void NoteProblem(std::string problem) {
    std::lock_guard lock(problem_mutex_);
    if (first_problem_.empty()) first_problem_ = std::move(problem);
  }

  Client* const client_;
  std::mutex model_mutex_;
  std::vector<Block> blocks_;
  std::deque<uint32_t> repair_queue_;
  uint32_t next_generation_ = 1;

  CompletionTracker tracker_{
      [this](Operation* operation, const absl::Status& status) { OnComplete(operation, status); }};
  std::atomic<uint64_t> corrupted_reads_{0};
  std::atomic<uint64_t> verified_bytes_{0};
  std::atomic<uint64_t> unexpected_failures_{0};
  std::atomic<uint64_t> bad_extents_{0};
  std::array<std::atomic<uint64_t>, kKinds> submitted_by_kind_{};
  std::array<std::atomic<uint64_t>, kKinds> failed_by_kind_{};
  uint64_t final_repairs_ = 0;

  mutable std::mutex problem_mutex_;
  std::string first_problem_;
};

TEST(SoakTest, MillionMixedRequestsWithInjectedErrorsLoseNothingAndCorruptNothing) {
  const uint64_t total = RequestCount();
  auto server = ServerProcess::StartNbdkit(
      {"--filter=error", "memory", absl::StrCat(kExportSize), "error-rate=1%", "error=EIO"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  options.connections = kConnections;
  options.threads = kRingThreads;
  options.inflight_limit = kInflightLimit;
  options.meta_contexts = {"base:allocation"};
  auto connected = Client::Connect(options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::unique_ptr<Client> client = *std::move(connected);
  ASSERT_EQ(client->connections(), kConnections) << "nbdkit memory advertises multi-conn";
  ASSERT_EQ(client->threads(), kRingThreads);
  ASSERT_EQ(client->size(), kExportSize);

  Soak soak(client.get());
  std::vector<Submitter> submitters(kSubmitters);
  const absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int i = 0; i < kSubmitters; ++i) {
    const uint64_t share = total / kSubmitters + (i == 0 ? total % kSubmitters : 0);
    threads.emplace_back([&soak, &submitters, i, share] {
      soak.RunSubmitter(&submitters[i], share, /*seed=*/0x50a4 + i, absl::Seconds(60));
    });
  }
  for (std::thread& thread : threads) thread.join();
  const absl::Duration soak_time = absl::Now() - start;

  uint64_t submitted = 0;
  for (const Submitter& submitter : submitters) submitted += submitter.submitted;
  const ClientStats stats = client->stats();
  std::printf(
      "soak: %llu requests in %s (%.0f/s), %llu failed (injected), %llu MiB verified by reads\n",
      static_cast<unsigned long long>(submitted), absl::FormatDuration(soak_time).c_str(),
      static_cast<double>(submitted) / absl::ToDoubleSeconds(soak_time),
      static_cast<unsigned long long>(soak.tracker().failed()),
      static_cast<unsigned long long>(soak.verified_bytes() / kMiB));
  for (int kind = 0; kind < kKinds; ++kind) {
    std::printf("  %-13s %8llu issued %6llu failed\n", kKindNames[kind],
                static_cast<unsigned long long>(soak.submitted(static_cast<Kind>(kind))),
                static_cast<unsigned long long>(soak.failed(static_cast<Kind>(kind))));
  }
  std::printf("  client: %llu wire requests, %llu enters, %llu queue-full waits, %llu wakeups\n",
              static_cast<unsigned long long>(stats.wire_requests),
              static_cast<unsigned long long>(stats.enters),
              static_cast<unsigned long long>(stats.queue_full_waits),
              static_cast<unsigned long long>(stats.wakeups));
  std::fflush(stdout);

  EXPECT_EQ(submitted, total);
  EXPECT_EQ(soak.tracker().submitted(), submitted);
  EXPECT_EQ(soak.tracker().completed(), submitted)
      << "lost requests: " << submitted - soak.tracker().completed();
  EXPECT_TRUE(soak.tracker().ExactlyOnce()) << soak.first_problem();
  EXPECT_EQ(soak.corrupted_reads(), 0u) << soak.first_problem();
  EXPECT_EQ(soak.unexpected_failures(), 0u) << soak.first_problem();
  EXPECT_EQ(soak.bad_extents(), 0u) << soak.first_problem();
  // The injection worked, on both reads and writes.
  EXPECT_GT(soak.tracker().failed(), 0u);
  EXPECT_GT(soak.failed(Kind::kRead), 0u);
  EXPECT_GT(soak.failed(Kind::kWrite), 0u);
  // The client's own books agree with ours.
  EXPECT_EQ(stats.requests, submitted);
  EXPECT_EQ(stats.errors, soak.tracker().failed());
  EXPECT_GT(soak.verified_bytes(), 0u);
  if (soak.tracker().completed() != submitted) return;  // the model is not settled: stop here

  soak.RepairUnknownBlocks();
  soak.VerifyWholeExport();
  std::printf("  end: %llu blocks rewritten after failed writes, whole export read back\n",
              static_cast<unsigned long long>(soak.final_repairs()));
  EXPECT_TRUE(client->Close().ok());
}

}  // namespace
}  // namespace nbdring
