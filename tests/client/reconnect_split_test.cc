// Reconnect with a partly staged split request.
//
// The server advertises a 64 KiB maximum payload (nbdkit's blocksize-policy filter, which
// also rejects anything larger, so a request the client failed to split would fail loudly),
// so every 1 MiB read or write goes out as 16 parts. With 4 in-flight slots, the first
// request has 4 parts on the wire while its other 12 parts, and every later request, wait in
// the connection's pending queue. The server (file plugin: the data survives) is killed at
// exactly that moment and started again on the same socket. With reconnect on, every request
// must then complete exactly once, without error, with the right data.
//
// Every wait has a deadline: a client that loses requests makes this test fail with a
// message naming what is missing, not hang.
#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
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
constexpr uint64_t kMaxPayload = 64 * kKiB;
constexpr uint64_t kRequestBytes = 1 * kMiB;  // 16 parts of kMaxPayload
constexpr uint32_t kInflightLimit = 4;
constexpr int kReads = 4;   // at 0, 1, 2, 3 MiB
constexpr int kWrites = 4;  // at 8, 9, 10, 11 MiB
constexpr uint64_t kWriteBase = 8 * kMiB;
// A working client needs about 7 s (8 requests x 16 parts, 4 at a time, 200 ms each).
constexpr absl::Duration kDeadline = absl::Seconds(30);

// The file's content before any write, and what the test writes over it.
uint8_t PatternByte(uint64_t offset) { return static_cast<uint8_t>(offset * 131 + (offset >> 16)); }
uint8_t WrittenByte(uint64_t offset) { return static_cast<uint8_t>(~PatternByte(offset) ^ 0x5a); }

struct Request : Operation {
  std::vector<uint8_t> data;
};

std::unique_ptr<Request> MakeRequest(Command command, uint64_t offset) {
  auto request = std::make_unique<Request>();
  request->command = command;
  request->offset = offset;
  request->length = kRequestBytes;
  request->data.resize(kRequestBytes);
  if (command == Command::kWrite) {
    for (uint64_t i = 0; i < kRequestBytes; ++i) request->data[i] = WrittenByte(offset + i);
  }
  request->buffer = request->data.data();
  return request;
}

// Empty when `request`'s buffer holds `expected(offset)` for every byte; else the first
// difference.
template <typename Expected>
std::string FirstMismatch(const Request& request, Expected expected) {
  for (uint64_t i = 0; i < request.length; ++i) {
    uint8_t want = expected(request.offset + i);
    if (request.data[i] != want) {
      return absl::StrCat("byte at disk offset ", request.offset + i, " is ",
                          static_cast<int>(request.data[i]), ", expected ", static_cast<int>(want));
    }
  }
  return "";
}

// Names the requests that have not completed, and the client's counters.
std::string Missing(const CompletionTracker& tracker,
                    const std::vector<std::unique_ptr<Request>>& requests, const Client& client) {
  std::string text;
  for (const auto& request : requests) {
    if (tracker.completions(request.get()) == 0) {
      absl::StrAppend(&text, "\n  never completed: ",
                      request->command == Command::kRead ? "read" : "write", " at ",
                      request->offset, " length ", request->length);
    }
  }
  ClientStats stats = client.stats();
  absl::StrAppend(&text, "\n  client stats: requests ", stats.requests, ", wire_requests ",
                  stats.wire_requests, ", errors ", stats.errors, ", reconnects ",
                  stats.reconnects);
  return text;
}

class ReconnectSplitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    disk_dir_ = *std::move(dir);
    const std::string path = disk_dir_->File("disk.img");
    ASSERT_TRUE(WriteDiskImage(path, kDiskBytes, PatternByte).ok());
    // Each part takes 200 ms in the server, so the first parts are still on the wire when
    // the server dies, however slow the machine.
    auto server = ServerProcess::StartNbdkit(
        {"--filter=blocksize-policy", "--filter=delay", "file", path,
         absl::StrCat("blocksize-maximum=", kMaxPayload), "blocksize-error-policy=error",
         "rdelay=200ms", "wdelay=200ms"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<TempDir> disk_dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ReconnectSplitTest, EveryRequestCompletesOnceWithTheRightData) {
  // Declared before the client, so the client is gone before the requests are freed.
  std::vector<std::unique_ptr<Request>> requests;
  for (int i = 0; i < std::max(kReads, kWrites); ++i) {
    if (i < kReads) requests.push_back(MakeRequest(Command::kRead, i * kRequestBytes));
    if (i < kWrites) requests.push_back(MakeRequest(Command::kWrite, kWriteBase + i * kRequestBytes));
  }
  std::vector<std::unique_ptr<Request>> readbacks;
  CompletionTracker tracker;
  CompletionTracker readback_tracker;

  ClientOptions options;
  options.uri = server_->uri();
  options.connections = 1;
  options.threads = 1;
  options.inflight_limit = kInflightLimit;
  options.reconnect = true;
  options.reconnect_delay = absl::Seconds(30);
  auto connected = Client::Connect(options);
  ASSERT_TRUE(connected.ok()) << connected.status();
  std::unique_ptr<Client> client = *std::move(connected);
  ASSERT_EQ(client->export_info().block_size.maximum, kMaxPayload)
      << "the blocksize-policy filter did not advertise the maximum";

  for (const auto& request : requests) tracker.Submit(*client, request.get());

  // The first request's first kInflightLimit parts are on the wire (the delay filter holds
  // them for 200 ms); its other parts and every other request wait in the pending queue.
  ASSERT_TRUE(WaitUntil([&] { return client->stats().wire_requests >= kInflightLimit; },
                        absl::Seconds(10)))
      << "the first parts never went out:" << Missing(tracker, requests, *client);
  ASSERT_EQ(tracker.completed(), 0u) << "a request completed before the kill";
  const uint64_t sent_before_kill = client->stats().wire_requests;

  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  ASSERT_TRUE(server_->Restart().ok());

  const bool all = tracker.WaitForAll(kDeadline);
  EXPECT_TRUE(all) << "only " << tracker.completed() << " of " << tracker.submitted()
                   << " requests (" << kRequestBytes / kMaxPayload << " parts each) completed within "
                   << kDeadline << " of the restart; the kill came with " << sent_before_kill
                   << " parts sent:" << Missing(tracker, requests, *client);
  EXPECT_TRUE(tracker.ExactlyOnce());
  EXPECT_TRUE(tracker.first_error().ok()) << tracker.first_error();
  if (!all) return;  // the data of lost requests means nothing

  for (const auto& request : requests) {
    ASSERT_TRUE(tracker.status(request.get()).ok()) << tracker.status(request.get());
    if (request->command != Command::kRead) continue;
    std::string mismatch = FirstMismatch(*request, PatternByte);
    EXPECT_EQ(mismatch, "") << "read at " << request->offset;
  }
  EXPECT_GE(client->stats().reconnects, 1u);

  // What the writes put there reads back (the file survived the restart).
  for (int i = 0; i < kWrites; ++i) {
    readbacks.push_back(MakeRequest(Command::kRead, kWriteBase + i * kRequestBytes));
    readback_tracker.Submit(*client, readbacks.back().get());
  }
  ASSERT_TRUE(readback_tracker.WaitForAll(kDeadline))
      << "read-back: only " << readback_tracker.completed() << " of "
      << readback_tracker.submitted() << " completed:" << Missing(readback_tracker, readbacks, *client);
  EXPECT_TRUE(readback_tracker.ExactlyOnce());
  for (const auto& readback : readbacks) {
    ASSERT_TRUE(readback_tracker.status(readback.get()).ok())
        << readback_tracker.status(readback.get());
    std::string mismatch = FirstMismatch(*readback, WrittenByte);
    EXPECT_EQ(mismatch, "") << "read-back of the write at " << readback->offset;
  }
}

}  // namespace
}  // namespace nbdring
