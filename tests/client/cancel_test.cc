// Client::Cancel against a real nbdkit slowed by its delay filter, so requests are really
// in flight (or really queued) when they are cancelled.
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbdring::testing::CompletionTracker;
using ::nbdring::testing::WaitUntil;
using ::testing::HasSubstr;

// Cancel must not wait for the server: 2 s per read. Waits for the client itself are bounded
// by kWait, so a lost completion fails the test instead of hanging it.
constexpr absl::Duration kWait = absl::Seconds(10);

struct ReadRequest : Operation {
  std::vector<uint8_t> data = std::vector<uint8_t>(4096, 0xAA);
};

void PrepareRead(ReadRequest& operation, uint64_t offset) {
  operation.command = Command::kRead;
  operation.offset = offset;
  operation.length = operation.data.size();
  operation.buffer = operation.data.data();
}

// Waits until `sent` requests are on the wire and `queued` have waited for an in-flight slot.
::testing::AssertionResult SentAndQueued(const Client& client, uint64_t sent, uint64_t queued) {
  if (WaitUntil(
          [&] {
            const ClientStats stats = client.stats();
            return stats.wire_requests == sent && stats.queue_full_waits == queued;
          },
          kWait)) {
    return ::testing::AssertionSuccess();
  }
  const ClientStats stats = client.stats();
  return ::testing::AssertionFailure() << stats.wire_requests << " requests on the wire (expected "
                                       << sent << "), " << stats.queue_full_waits
                                       << " waited for a slot (expected " << queued << ")";
}

class CancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Every read takes 2 s on the server.
    auto server = ServerProcess::StartNbdkit({"--filter=delay", "memory", "16M", "rdelay=2"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Client> Connect(uint32_t inflight_limit) {
    ClientOptions options;
    options.uri = server_->uri();
    options.inflight_limit = inflight_limit;
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  std::unique_ptr<ServerProcess> server_;
};

TEST_F(CancelTest, InFlightReadCompletesAtOnceAndTheConnectionStaysUsable) {
  CompletionTracker tracker;
  std::unique_ptr<Client> client = Connect(4);
  ASSERT_NE(client, nullptr);
  ReadRequest read;
  PrepareRead(read, 0);
  const uint64_t id = tracker.Submit(*client, &read);
  ASSERT_TRUE(WaitUntil([&] { return client->stats().wire_requests == 1; }, kWait))
      << "the read never went on the wire";
  absl::Time cancelled_at = absl::Now();
  client->Cancel(&read, id);
  ASSERT_TRUE(tracker.WaitFor(&read, kWait));
  EXPECT_LT(absl::Now() - cancelled_at, absl::Seconds(1));
  const absl::Status status = tracker.status(&read);
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(status.message(), HasSubstr("NBD_CMD_READ at offset 0 length 4096 was cancelled"));
  // The late reply is discarded; the buffer the caller got back is not written to.
  std::fill(read.data.begin(), read.data.end(), 0x55);
  // The same connection serves the next request (after the server's delay).
  std::vector<uint8_t> buffer(4096, 0xAA);
  EXPECT_TRUE(client->PreadSync(buffer.data(), buffer.size(), 4096).ok());
  EXPECT_EQ(buffer, std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(read.data, std::vector<uint8_t>(4096, 0x55));
  EXPECT_TRUE(tracker.ExactlyOnce());
}

TEST_F(CancelTest, QueuedRequestIsNeverSent) {
  CompletionTracker tracker;
  std::unique_ptr<Client> client = Connect(1);  // one slot: the second read must queue
  ASSERT_NE(client, nullptr);
  ReadRequest first, second;
  PrepareRead(first, 0);
  PrepareRead(second, 4096);
  tracker.Submit(*client, &first);
  const uint64_t second_id = tracker.Submit(*client, &second);
  // The first holds the only slot; the second waits behind it (queue_full_waits counts it).
  ASSERT_TRUE(SentAndQueued(*client, 1, 1));
  client->Cancel(&second, second_id);
  ASSERT_TRUE(tracker.WaitFor(&second, kWait));
  EXPECT_EQ(tracker.status(&second).code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(tracker.WaitFor(&first, kWait));
  EXPECT_TRUE(tracker.status(&first).ok()) << tracker.status(&first);
  EXPECT_EQ(client->stats().wire_requests, 1u);  // the cancelled one never left
  EXPECT_TRUE(tracker.ExactlyOnce());
}

TEST_F(CancelTest, CancellingACompletedRequestDoesNothing) {
  CompletionTracker tracker;
  std::unique_ptr<Client> client = Connect(4);
  ASSERT_NE(client, nullptr);
  ReadRequest read;
  PrepareRead(read, 0);
  const uint64_t id = tracker.Submit(*client, &read);
  ASSERT_TRUE(tracker.WaitFor(&read, kWait));
  ASSERT_TRUE(tracker.status(&read).ok()) << tracker.status(&read);
  client->Cancel(&read, id);
  // Close drains the ring, so a second completion the stale Cancel caused would be counted.
  EXPECT_TRUE(client->Close().ok());
  EXPECT_TRUE(tracker.ExactlyOnce());
}

TEST_F(CancelTest, ManyInFlightAllCompleteExactlyOnce) {
  CompletionTracker tracker;
  std::unique_ptr<Client> client = Connect(16);
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(32);
  std::vector<uint64_t> ids(reads.size());
  for (size_t i = 0; i < reads.size(); ++i) {
    PrepareRead(reads[i], i * 4096);
    ids[i] = tracker.Submit(*client, &reads[i]);
  }
  // 16 slots: the first 16 are on the wire, the other 16 wait for a slot.
  ASSERT_TRUE(SentAndQueued(*client, 16, 16));
  for (size_t i = 0; i < reads.size(); i += 2) client->Cancel(&reads[i], ids[i]);
  // Uncancelled reads take 2 s each on the server, 8 at a time in flight per round.
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(30)))
      << tracker.completed() << " of " << reads.size() << " completed";
  for (size_t i = 0; i < reads.size(); ++i) {
    EXPECT_EQ(tracker.completions(&reads[i]), 1) << i;
    const absl::Status status = tracker.status(&reads[i]);
    if (i % 2 == 0) {
      EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << i;
    } else {
      EXPECT_TRUE(status.ok()) << i << ": " << status;
    }
  }
  EXPECT_TRUE(client->Close().ok());
  EXPECT_TRUE(tracker.ExactlyOnce());
}

}  // namespace
}  // namespace nbdring
