// A server that stops in the middle of a reply must cost the client nothing while it waits:
// the ring sleeps in io_uring_enter until the socket has data. (Sockets left non-blocking
// made io_uring complete every recv with -EAGAIN at once, and the client re-armed it at once:
// one core spinning for as long as the server stalled.)
#include <sys/resource.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nbd/wire.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/event.h"
#include "tests/testing/scripted_server.h"

namespace nbdring {
namespace {

using ::nbd::testing::Action;
using ::nbd::testing::Custom;
using ::nbd::testing::ExpectClientFlags;
using ::nbd::testing::ExpectDisconnect;
using ::nbd::testing::ExpectRequest;
using ::nbd::testing::ExpectRequestHeader;
using ::nbd::testing::ReceiveWritePayload;
using ::nbd::testing::ReplyNone;
using ::nbd::testing::Greet;
using ::nbd::testing::HandleOptionsUntilGo;
using ::nbd::testing::PatternBytes;
using ::nbd::testing::ReplyChunkHeader;
using ::nbd::testing::ScriptedConnection;
using ::nbd::testing::ScriptedServer;
using ::nbd::testing::SendRaw;
using ::nbd::testing::Sleep;
using ::nbdring::testing::CompletionTracker;
using ::nbdring::testing::Event;

constexpr size_t kFirstPart = 100;  // data bytes sent before the stall
constexpr absl::Duration kStall = absl::Seconds(2);
constexpr int64_t kCpuBudgetUs = 20000;

// The server's stall, as two script actions around it, and the client process's CPU time
// between them (only the stall: the server's own work before and after is not the client's).
class StallWindow {
 public:
  Action Begins() { return Notify("tell the test the stall begins", &began_); }
  Action Ends() { return Notify("tell the test the stall is over", &ended_); }

  struct Measurement {
    int64_t cpu_us = 0;
    absl::Duration waited;
  };
  // Waits for the stall to begin and end; nothing when either did not happen in time.
  std::optional<Measurement> Measure() {
    if (!began_.WaitFor(absl::Seconds(10))) return std::nullopt;
    const int64_t cpu_before_us = ProcessCpuMicroseconds();
    const absl::Time began_at = absl::Now();
    if (!ended_.WaitFor(absl::Seconds(20))) return std::nullopt;
    return Measurement{ProcessCpuMicroseconds() - cpu_before_us, absl::Now() - began_at};
  }

 private:
  static Action Notify(std::string description, Event* event) {
    return Custom(std::move(description), [event](ScriptedConnection&) {
      event->Notify();
      return absl::OkStatus();
    });
  }
  static int64_t ProcessCpuMicroseconds() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return (int64_t{usage.ru_utime.tv_sec} + usage.ru_stime.tv_sec) * 1000000 +
           usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
  }

  Event began_;
  Event ended_;
};

// Small reads arrive through the connection's receive buffer; large ones (>= 16 KiB by
// default) straight into the caller's buffer with MSG_WAITALL: both waits must sleep.
class StalledReadTest : public ::testing::TestWithParam<uint64_t> {};

TEST_P(StalledReadTest, WaitingForTheRestOfAReplyUsesNoCpu) {
  const uint64_t kReadBytes = GetParam();
  const std::vector<uint8_t> data = PatternBytes(0, kReadBytes);
  StallWindow stall;
  // OFFSET_DATA payload: the 64-bit offset (0), then the data.
  std::vector<uint8_t> first_part(8, 0);
  first_part.insert(first_part.end(), data.begin(), data.begin() + kFirstPart);
  std::vector<uint8_t> rest(data.begin() + kFirstPart, data.end());
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(),
      ExpectRequest(nbd::Command::kRead),
      ReplyChunkHeader(0, nbd::kReplyFlagDone,
                       static_cast<uint16_t>(nbd::ReplyType::kOffsetData),
                       static_cast<uint32_t>(8 + kReadBytes)),
      SendRaw(first_part),
      stall.Begins(),
      Sleep(kStall),
      stall.Ends(),
      SendRaw(rest),
      ExpectDisconnect(),
  });
  ClientOptions options;
  options.uri = server.uri();
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  std::vector<uint8_t> buffer(kReadBytes);
  Operation read;
  read.command = Command::kRead;
  read.length = kReadBytes;
  read.buffer = buffer.data();
  CompletionTracker tracker;
  tracker.Submit(**client, &read);
  std::optional<StallWindow::Measurement> measured = stall.Measure();
  ASSERT_TRUE(measured.has_value()) << "the server's stall did not begin and end in time";
  ASSERT_TRUE(tracker.WaitFor(1, absl::Seconds(20)));

  EXPECT_TRUE(tracker.status(&read).ok()) << tracker.status(&read);
  EXPECT_EQ(buffer, data);
  EXPECT_GE(measured->waited, kStall - absl::Milliseconds(100));
  EXPECT_LT(measured->cpu_us, kCpuBudgetUs)
      << "the client process used " << measured->cpu_us << " us of CPU while the server "
      << "stalled for " << absl::FormatDuration(measured->waited);
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

INSTANTIATE_TEST_SUITE_P(ThroughReceiveBufferAndDirect, StalledReadTest,
                         ::testing::Values(uint64_t{4096}, uint64_t{1} << 20));

// A write whose payload the server stops reading: the client's send waits for socket space.
TEST(StalledWriteTest, WaitingForTheServerToReadAWriteUsesNoCpu) {
  constexpr uint64_t kWriteBytes = 8 << 20;  // far more than the socket buffers hold
  StallWindow stall;
  nbd::testing::ScriptedExport export_config;
  export_config.size = 16 << 20;
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(export_config),
      ExpectRequestHeader(nbd::Command::kWrite),
      stall.Begins(),
      Sleep(kStall),
      stall.Ends(),
      ReceiveWritePayload(0),
      ReplyNone(0),
      ExpectDisconnect(),
  });
  ClientOptions options;
  options.uri = server.uri();
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> data(kWriteBytes, 0x5A);
  Operation write;
  write.command = Command::kWrite;
  write.length = kWriteBytes;
  write.buffer = data.data();
  CompletionTracker tracker;
  tracker.Submit(**client, &write);
  std::optional<StallWindow::Measurement> measured = stall.Measure();
  ASSERT_TRUE(measured.has_value()) << "the server's stall did not begin and end in time";
  ASSERT_TRUE(tracker.WaitFor(1, absl::Seconds(20)));
  EXPECT_TRUE(tracker.status(&write).ok()) << tracker.status(&write);
  EXPECT_LT(measured->cpu_us, kCpuBudgetUs)
      << "the client process used " << measured->cpu_us << " us of CPU while the server stalled";
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

}  // namespace
}  // namespace nbdring
