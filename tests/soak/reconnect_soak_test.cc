// Reconnect, end to end: a client with reconnect on (2 ring threads, 2 connections, 8
// in-flight slots each) keeps a few dozen reads and writes in flight while its nbdkit server
// is killed with SIGKILL and started again on the same socket every half second for 20 s,
// then left up. The server advertises a 64 KiB maximum payload (and rejects larger
// requests), and most requests are larger, so split requests are always partly on the wire
// and partly queued when the server dies.
//
// Checked: every request completes exactly once and without error; every read returns what
// the model says (per 4 KiB block: the generation of the last write that completed there;
// requests in flight never overlap, so the model is well defined while a read is out); and at
// the end the whole disk holds what the model says. Every wait has a deadline, so a client
// that loses requests fails the test with a message instead of hanging it.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::nbd::testing::WriteDiskImage;
using ::nbdring::testing::CompletionTracker;
using ::nbdring::testing::WaitUntil;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kDiskBytes = 16 * kMiB;
constexpr uint64_t kBlock = 4 * kKiB;  // the model's unit
constexpr uint32_t kBlocks = kDiskBytes / kBlock;
constexpr uint64_t kMaxPayload = 64 * kKiB;  // advertised by the server: larger requests split
constexpr uint32_t kMaxRequestBlocks = 64;   // 256 KiB: up to 4 parts
constexpr uint64_t kMaxRequestBytes = kMaxRequestBlocks * kBlock;
constexpr int kConnections = 2;
constexpr int kThreads = 2;
constexpr uint32_t kInflightLimit = 8;  // 16 slots for up to 4 x kWindow parts: queues form
constexpr int kWindow = 32;             // requests in flight at any time
constexpr absl::Duration kKillPeriod = absl::Milliseconds(500);
constexpr absl::Duration kKillPhase = absl::Seconds(20);
// After a restart the client must have completed something before the next kill.
constexpr absl::Duration kProgressDeadline = absl::Seconds(10);
// A right client drains in well under a second (plus at most one 2 s reconnect backoff).
constexpr absl::Duration kDrainDeadline = absl::Seconds(15);
constexpr uint32_t kUnknown = UINT32_MAX;  // a block whose write failed

// Every 8-byte word of the disk: which write generation put it there (0: the initial file)
// and its own offset, so a misplaced or stale word names itself.
uint64_t Word(uint32_t generation, uint64_t offset) {
  return (uint64_t{0x5a} << 56) | (uint64_t{generation} << 32) | offset;
}
std::string Describe(uint64_t word) {
  return absl::StrCat("generation ", (word >> 32) & 0xffffff, " offset ", word & 0xffffffff);
}

struct Request : Operation {
  std::vector<uint64_t> words = std::vector<uint64_t>(kMaxRequestBytes / 8);
  uint32_t generation = 0;  // writes: what the buffer holds
  bool in_flight = false;   // guarded by Soak::mutex_
};

class Soak {
 public:
  Soak() : tracker_([this](Operation* operation, const absl::Status& status) {
             OnComplete(static_cast<Request*>(operation), status);
           }),
           generation_(kBlocks, 0),
           busy_(kBlocks, false) {
    for (int i = 0; i < kWindow; ++i) {
      requests_.push_back(std::make_unique<Request>());
      free_.push_back(requests_.back().get());
    }
  }

  // Keeps kWindow requests in flight until `stop`.
  void Submit(Client& client, const std::atomic<bool>& stop) {
    std::mt19937_64 random(0x5eed);
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop.load()) {
      if (free_.empty()) {
        changed_.wait_for(lock, std::chrono::milliseconds(50));
        continue;
      }
      // Half small (1-16 blocks, one part), half large (17-64 blocks, 2-4 parts).
      const bool large = random() % 2 == 0;
      const uint32_t blocks = large ? 17 + random() % (kMaxRequestBlocks - 16) : 1 + random() % 16;
      const bool write = random() % 2 == 0;
      uint32_t first = kBlocks;
      for (int attempt = 0; attempt < 16 && first == kBlocks; ++attempt) {
        uint32_t candidate = random() % (kBlocks - blocks + 1);
        if (std::none_of(busy_.begin() + candidate, busy_.begin() + candidate + blocks,
                         [](bool busy) { return busy; })) {
          first = candidate;
        }
      }
      if (first == kBlocks) {
        changed_.wait_for(lock, std::chrono::milliseconds(50));
        continue;
      }
      Request* request = free_.back();
      free_.pop_back();
      std::fill(busy_.begin() + first, busy_.begin() + first + blocks, true);
      request->in_flight = true;
      request->command = write ? Command::kWrite : Command::kRead;
      request->offset = first * kBlock;
      request->length = blocks * kBlock;
      request->buffer = request->words.data();
      request->generation = write ? ++last_generation_ : 0;
      lock.unlock();
      if (write) {
        for (uint64_t i = 0; i < request->length / 8; ++i) {
          request->words[i] = Word(request->generation, request->offset + 8 * i);
        }
      }
      tracker_.Submit(client, request);
      lock.lock();
    }
  }

  // The whole disk against the model, in 1 MiB reads (16 parts each).
  void VerifyDisk(Client& client) {
    constexpr uint64_t kChunk = 1 * kMiB;
    std::vector<std::unique_ptr<Request>> reads;
    CompletionTracker tracker;
    for (uint64_t offset = 0; offset < kDiskBytes; offset += kChunk) {
      auto read = std::make_unique<Request>();
      read->words.resize(kChunk / 8);
      read->command = Command::kRead;
      read->offset = offset;
      read->length = kChunk;
      read->buffer = read->words.data();
      tracker.Submit(client, read.get());
      reads.push_back(std::move(read));
    }
    ASSERT_TRUE(tracker.WaitForAll(kDrainDeadline))
        << "final read of the disk: only " << tracker.completed() << " of " << tracker.submitted()
        << " 1 MiB reads completed within " << kDrainDeadline;
    EXPECT_TRUE(tracker.ExactlyOnce());
    ASSERT_TRUE(tracker.first_error().ok()) << "final read of the disk: " << tracker.first_error();
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& read : reads) {
      std::string mismatch = Check(*read);
      EXPECT_EQ(mismatch, "") << "final read of the disk";
      if (!mismatch.empty()) break;
    }
  }

  CompletionTracker& tracker() { return tracker_; }
  std::string Summary() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return absl::StrCat(completed_, " requests completed (", reads_, " reads, ", writes_,
                        " writes, ", split_, " split into parts), ", verified_bytes_ / kMiB,
                        " MiB verified by reads, ", failures_, " failed, ", duplicates_,
                        " completed twice, ", bad_reads_, " reads with wrong data");
  }
  std::string InFlight() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string text;
    int count = 0;
    for (const auto& request : requests_) {
      if (!request->in_flight) continue;
      if (++count <= 8) {
        absl::StrAppend(&text, "\n  never completed: ",
                        request->command == Command::kRead ? "read" : "write", " at ",
                        request->offset, " length ", request->length);
      }
    }
    if (count > 8) absl::StrAppend(&text, "\n  ... and ", count - 8, " more");
    return text;
  }
  uint64_t completed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return completed_;
  }
  uint64_t failures() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return failures_;
  }
  uint64_t duplicates() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return duplicates_;
  }
  uint64_t bad_reads() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return bad_reads_;
  }
  std::string first_problem() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_problem_;
  }

 private:
  // Runs on a ring thread, after the tracker has counted the completion.
  void OnComplete(Request* request, const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mutex_);
    const char* kind = request->command == Command::kRead ? "read" : "write";
    if (!request->in_flight) {
      ++duplicates_;
      Note(absl::StrCat("second completion of a ", kind, " at ", request->offset, " length ",
                        request->length, ": ", status.ToString()));
      return;
    }
    request->in_flight = false;
    const uint32_t first = request->offset / kBlock;
    const uint32_t blocks = request->length / kBlock;
    if (!status.ok()) {
      ++failures_;
      Note(absl::StrCat(kind, " at ", request->offset, " length ", request->length,
                        " failed: ", status.ToString()));
      if (request->command == Command::kWrite) {
        std::fill(generation_.begin() + first, generation_.begin() + first + blocks, kUnknown);
      }
    } else if (request->command == Command::kRead) {
      ++reads_;
      std::string mismatch = Check(*request);
      if (mismatch.empty()) {
        verified_bytes_ += request->length;
      } else {
        ++bad_reads_;
        Note(mismatch);
      }
    } else {
      ++writes_;
      std::fill(generation_.begin() + first, generation_.begin() + first + blocks,
                request->generation);
    }
    if (request->length > kMaxPayload) ++split_;
    ++completed_;
    std::fill(busy_.begin() + first, busy_.begin() + first + blocks, false);
    free_.push_back(request);
    changed_.notify_all();
  }

  // Empty when `read` holds what the model says; else the first difference. Needs mutex_.
  std::string Check(const Request& read) const {
    for (uint64_t i = 0; i < read.length / 8; ++i) {
      const uint64_t offset = read.offset + 8 * i;
      const uint32_t generation = generation_[offset / kBlock];
      if (generation == kUnknown) continue;
      if (read.words[i] != Word(generation, offset)) {
        return absl::StrCat("read at ", read.offset, " length ", read.length, ": word at ",
                            offset, " holds ", Describe(read.words[i]), ", expected ",
                            Describe(Word(generation, offset)));
      }
    }
    return "";
  }

  void Note(std::string problem) {
    if (first_problem_.empty()) first_problem_ = std::move(problem);
  }

  CompletionTracker tracker_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::unique_ptr<Request>> requests_;
  std::vector<Request*> free_;
  std::vector<uint32_t> generation_;  // per block: the last completed write's generation
  std::vector<bool> busy_;            // per block: a request in flight covers it
  uint32_t last_generation_ = 0;
  uint64_t completed_ = 0;
  uint64_t reads_ = 0;
  uint64_t writes_ = 0;
  uint64_t split_ = 0;
  uint64_t verified_bytes_ = 0;
  uint64_t failures_ = 0;
  uint64_t duplicates_ = 0;
  uint64_t bad_reads_ = 0;
  std::string first_problem_;
};

TEST(ReconnectSoakTest, KillAndRestartTheServerUnderLoad) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok()) << dir.status();
  const std::string path = (*dir)->File("disk.img");
  // Generation 0 of every word, laid out as the words read back from memory.
  ASSERT_TRUE(WriteDiskImage(path, kDiskBytes, [](uint64_t offset) {
                const uint64_t word = Word(0, offset & ~uint64_t{7});
                uint8_t bytes[8];
                std::memcpy(bytes, &word, sizeof(word));
                return bytes[offset & 7];
              }).ok());
  // The file plugin keeps the data across restarts; the delay filter keeps requests on the
  // wire long enough that every kill finds some.
  auto started = ServerProcess::StartNbdkit(
      {"--filter=blocksize-policy", "--filter=delay", "file", path,
       absl::StrCat("blocksize-maximum=", kMaxPayload), "blocksize-error-policy=error",
       "rdelay=2ms", "wdelay=2ms"});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<ServerProcess> server = *std::move(started);

  // Declared before the client, so the client is gone before the requests are freed.
  Soak soak;
  ClientOptions options;
  options.uri = server->uri();
  options.connections = kConnections;
  options.threads = kThreads;
  options.inflight_limit = kInflightLimit;
  options.reconnect = true;
  options.reconnect_delay = absl::Seconds(30);
  auto connected = Client::Connect(options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::unique_ptr<Client> client = *std::move(connected);
  ASSERT_EQ(client->connections(), kConnections);
  ASSERT_EQ(client->export_info().block_size.maximum, kMaxPayload);

  std::atomic<bool> stop{false};
  std::thread submitter([&] { soak.Submit(*client, stop); });

  // The kill schedule: every kKillPeriod, once the client has completed something since the
  // last restart (so every kill finds a reconnected client with requests in flight).
  const absl::Time start = absl::Now();
  absl::Time next_kill = start + kKillPeriod;
  int kills = 0;
  std::string kill_problem;
  uint64_t completed_at_restart = 0;
  while (next_kill < start + kKillPhase) {
    if (!WaitUntil([&] { return soak.completed() > completed_at_restart; }, kProgressDeadline)) {
      kill_problem = absl::StrCat("no request completed within ", absl::FormatDuration(kProgressDeadline),
                                  " of restart ", kills, " (", soak.completed(),
                                  " completed in all, ", client->stats().reconnects,
                                  " reconnects)");
      break;
    }
    absl::SleepFor(next_kill - absl::Now());  // the schedule, not a wait for an effect
    server->Kill(SIGKILL);
    absl::Status reaped = server->Wait();
    absl::Status restarted = reaped.ok() ? server->Restart() : reaped;
    if (!restarted.ok()) {
      kill_problem = absl::StrCat("restart ", kills + 1, " failed: ", restarted.ToString());
      break;
    }
    ++kills;
    completed_at_restart = soak.completed();
    next_kill += kKillPeriod;
  }
  stop.store(true);
  submitter.join();
  EXPECT_EQ(kill_problem, "");

  // The server stays up now: everything must drain.
  const bool drained = soak.tracker().WaitForAll(kDrainDeadline);
  const ClientStats stats = client->stats();
  std::printf("reconnect soak: %s; %d kills, %llu reconnects, %llu wire requests\n",
              soak.Summary().c_str(), kills, static_cast<unsigned long long>(stats.reconnects),
              static_cast<unsigned long long>(stats.wire_requests));
  std::fflush(stdout);
  EXPECT_TRUE(drained) << soak.tracker().submitted() - soak.tracker().completed() << " of "
                       << soak.tracker().submitted() << " requests not completed within "
                       << kDrainDeadline << " of the last restart:" << soak.InFlight();
  EXPECT_TRUE(soak.tracker().ExactlyOnce());
  EXPECT_EQ(soak.duplicates(), 0u) << soak.first_problem();
  EXPECT_EQ(soak.failures(), 0u) << soak.first_problem();
  EXPECT_EQ(soak.bad_reads(), 0u) << soak.first_problem();
  EXPECT_GE(stats.reconnects, static_cast<uint64_t>(kills));
  if (!drained) return;  // a lost write leaves its blocks undefined
  soak.VerifyDisk(*client);
}

}  // namespace
}  // namespace nbdring
