// A server that stops in the middle of a reply must cost the client nothing while it waits:
// the ring sleeps in io_uring_enter until the socket has data. (Sockets left non-blocking
// made io_uring complete every recv with -EAGAIN at once, and the client re-armed it at once:
// one core spinning for as long as the server stalled.)
#include <sys/resource.h>

#include <cstdint>
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

Action NotifyAction(std::string description, Event* event) {
  return Custom(std::move(description), [event](ScriptedConnection&) {
    event->Notify();
    return absl::OkStatus();
  });
}

int64_t ProcessCpuMicroseconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return (int64_t{usage.ru_utime.tv_sec} + usage.ru_stime.tv_sec) * 1000000 +
         usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
}

// Small reads arrive through the connection's receive buffer; large ones (>= 16 KiB by
// default) straight into the caller's buffer with MSG_WAITALL: both waits must sleep.
class StalledReadTest : public ::testing::TestWithParam<uint64_t> {};

TEST_P(StalledReadTest, WaitingForTheRestOfAReplyUsesNoCpu) {
  const uint64_t kReadBytes = GetParam();
  const std::vector<uint8_t> data = PatternBytes(0, kReadBytes);
  Event first_part_sent;
  Event stall_over;
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
      NotifyAction("tell the test the stall begins", &first_part_sent),
      Sleep(kStall),
      NotifyAction("tell the test the stall is over", &stall_over),
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
  ASSERT_TRUE(first_part_sent.WaitFor(absl::Seconds(10)));
  const int64_t cpu_before_us = ProcessCpuMicroseconds();
  const absl::Time stall_began = absl::Now();
  ASSERT_TRUE(stall_over.WaitFor(absl::Seconds(20)));
  // Only the stall is measured: the server's own work before and after is not the client's.
  const int64_t cpu_used_us = ProcessCpuMicroseconds() - cpu_before_us;
  const absl::Duration waited = absl::Now() - stall_began;
  ASSERT_TRUE(tracker.WaitFor(1, absl::Seconds(20)));

  EXPECT_TRUE(tracker.status(&read).ok()) << tracker.status(&read);
  EXPECT_EQ(buffer, data);
  EXPECT_GE(waited, kStall - absl::Milliseconds(100));
  EXPECT_LT(cpu_used_us, kCpuBudgetUs) << "the client process used " << cpu_used_us
                                       << " us of CPU while the server stalled for "
                                       << absl::FormatDuration(waited);
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

INSTANTIATE_TEST_SUITE_P(ThroughReceiveBufferAndDirect, StalledReadTest,
                         ::testing::Values(uint64_t{4096}, uint64_t{1} << 20));

// A write whose payload the server stops reading: the client's send waits for socket space.
TEST(StalledWriteTest, WaitingForTheServerToReadAWriteUsesNoCpu) {
  constexpr uint64_t kWriteBytes = 8 << 20;  // far more than the socket buffers hold
  Event header_read;
  Event stall_over;
  nbd::testing::ScriptedExport export_config;
  export_config.size = 16 << 20;
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(export_config),
      ExpectRequestHeader(nbd::Command::kWrite),
      NotifyAction("tell the test the stall begins", &header_read),
      Sleep(kStall),
      NotifyAction("tell the test the stall is over", &stall_over),
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
  ASSERT_TRUE(header_read.WaitFor(absl::Seconds(10)));
  const int64_t cpu_before_us = ProcessCpuMicroseconds();
  ASSERT_TRUE(stall_over.WaitFor(absl::Seconds(20)));
  const int64_t cpu_used_us = ProcessCpuMicroseconds() - cpu_before_us;
  ASSERT_TRUE(tracker.WaitFor(1, absl::Seconds(20)));
  EXPECT_TRUE(tracker.status(&write).ok()) << tracker.status(&write);
  EXPECT_LT(cpu_used_us, kCpuBudgetUs) << "the client process used " << cpu_used_us
                                       << " us of CPU while the server stalled";
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

}  // namespace
}  // namespace nbdring
