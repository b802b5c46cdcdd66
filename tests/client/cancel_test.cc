// Client::Cancel against a real nbdkit slowed by its delay filter, so requests are really
// in flight (or really queued) when they are cancelled.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::testing::HasSubstr;

struct CountedOperation : Operation {
  std::atomic<int> completions{0};
  std::atomic<bool> done{false};
  absl::Status status;
  std::vector<uint8_t> data = std::vector<uint8_t>(4096, 0xAA);
};

void OnCountedComplete(Operation* operation, const absl::Status& status) {
  auto* counted = static_cast<CountedOperation*>(operation);
  counted->status = status;
  counted->completions.fetch_add(1);
  counted->done.store(true, std::memory_order_release);
  counted->done.notify_all();
}

void PrepareRead(CountedOperation& operation, uint64_t offset) {
  operation.command = Command::kRead;
  operation.offset = offset;
  operation.length = operation.data.size();
  operation.buffer = operation.data.data();
  operation.on_complete = &OnCountedComplete;
}

void WaitDone(CountedOperation& operation) {
  while (!operation.done.load(std::memory_order_acquire)) operation.done.wait(false);
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
  std::unique_ptr<Client> client = Connect(4);
  ASSERT_NE(client, nullptr);
  CountedOperation read;
  PrepareRead(read, 0);
  const uint64_t id = client->Submit(&read);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // it is on the wire now
  EXPECT_EQ(client->stats().wire_requests, 1u);
  absl::Time cancelled_at = absl::Now();
  client->Cancel(&read, id);
  WaitDone(read);
  EXPECT_LT(absl::Now() - cancelled_at, absl::Seconds(1));
  EXPECT_EQ(read.status.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(read.status.message(), HasSubstr("NBD_CMD_READ at offset 0 length 4096 was cancelled"));
  // The late reply is discarded; the buffer the caller got back is not written to.
  std::fill(read.data.begin(), read.data.end(), 0x55);
  // The same connection serves the next request (after the server's delay).
  std::vector<uint8_t> buffer(4096, 0xAA);
  EXPECT_TRUE(client->PreadSync(buffer.data(), buffer.size(), 4096).ok());
  EXPECT_EQ(buffer, std::vector<uint8_t>(4096, 0));
  EXPECT_EQ(read.data, std::vector<uint8_t>(4096, 0x55));
  EXPECT_EQ(read.completions.load(), 1);
}

TEST_F(CancelTest, QueuedRequestIsNeverSent) {
  std::unique_ptr<Client> client = Connect(1);  // one slot: the second read must queue
  ASSERT_NE(client, nullptr);
  CountedOperation first, second;
  PrepareRead(first, 0);
  PrepareRead(second, 4096);
  client->Submit(&first);
  const uint64_t second_id = client->Submit(&second);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  client->Cancel(&second, second_id);
  WaitDone(second);
  EXPECT_EQ(second.status.code(), absl::StatusCode::kCancelled);
  WaitDone(first);
  EXPECT_TRUE(first.status.ok()) << first.status;
  EXPECT_EQ(client->stats().wire_requests, 1u);  // the cancelled one never left
  EXPECT_EQ(first.completions.load(), 1);
  EXPECT_EQ(second.completions.load(), 1);
}

TEST_F(CancelTest, CancellingACompletedRequestDoesNothing) {
  std::unique_ptr<Client> client = Connect(4);
  ASSERT_NE(client, nullptr);
  CountedOperation read;
  PrepareRead(read, 0);
  const uint64_t id = client->Submit(&read);
  WaitDone(read);
  ASSERT_TRUE(read.status.ok()) << read.status;
  client->Cancel(&read, id);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(read.completions.load(), 1);
  EXPECT_TRUE(client->Close().ok());
}

TEST_F(CancelTest, ManyInFlightAllCompleteExactlyOnce) {
  std::unique_ptr<Client> client = Connect(16);
  ASSERT_NE(client, nullptr);
  std::vector<CountedOperation> reads(32);
  std::vector<uint64_t> ids(reads.size());
  for (size_t i = 0; i < reads.size(); ++i) {
    PrepareRead(reads[i], i * 4096);
    ids[i] = client->Submit(&reads[i]);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (size_t i = 0; i < reads.size(); i += 2) client->Cancel(&reads[i], ids[i]);
  for (CountedOperation& read : reads) WaitDone(read);
  for (size_t i = 0; i < reads.size(); ++i) {
    EXPECT_EQ(reads[i].completions.load(), 1) << i;
    if (i % 2 == 0) {
      EXPECT_EQ(reads[i].status.code(), absl::StatusCode::kCancelled) << i;
    } else {
      EXPECT_TRUE(reads[i].status.ok()) << i << ": " << reads[i].status;
    }
  }
  EXPECT_TRUE(client->Close().ok());
}

}  // namespace
}  // namespace nbdring
