// ClientOptions::reconnect against a real nbdkit that is killed with requests in flight and
// started again on the same socket (file plugin, so the data survives the restart).
#include <signal.h>

#include <atomic>
#include <chrono>
#include <fstream>
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
using ::nbd::testing::TempDir;
using ::testing::HasSubstr;

constexpr uint64_t kDiskBytes = 16 << 20;
constexpr uint64_t kBlock = 64 * 1024;

struct ReadRequest : Operation {
  std::vector<uint8_t> data = std::vector<uint8_t>(kBlock);
  std::atomic<int> completions{0};
  absl::Status status;
};

std::atomic<int> finished{0};

void OnReadComplete(Operation* operation, const absl::Status& status) {
  auto* read = static_cast<ReadRequest*>(operation);
  read->status = status;
  read->completions.fetch_add(1);
  finished.fetch_add(1);
  finished.notify_all();
}

uint8_t PatternByte(uint64_t offset) { return static_cast<uint8_t>(offset * 131 + (offset >> 16)); }

class ReconnectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    finished = 0;
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    disk_dir_ = *std::move(dir);
    std::string path = disk_dir_->File("disk.img");
    std::ofstream disk(path, std::ios::binary);
    std::vector<char> bytes(kDiskBytes);
    for (uint64_t i = 0; i < kDiskBytes; ++i) bytes[i] = static_cast<char>(PatternByte(i));
    disk.write(bytes.data(), bytes.size());
    disk.close();
    // Reads take 300 ms, so they are really in flight when the server dies.
    auto server = ServerProcess::StartNbdkit({"--filter=delay", "file", path, "rdelay=300ms"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Client> Connect(bool reconnect, absl::Duration delay) {
    ClientOptions options;
    options.uri = server_->uri();
    options.connections = 2;
    options.reconnect = reconnect;
    options.reconnect_delay = delay;
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  void SubmitReads(Client& client, std::vector<ReadRequest>& reads) {
    for (size_t i = 0; i < reads.size(); ++i) {
      reads[i].command = Command::kRead;
      reads[i].offset = i * kBlock;
      reads[i].length = kBlock;
      reads[i].buffer = reads[i].data.data();
      reads[i].on_complete = &OnReadComplete;
      client.Submit(&reads[i]);
    }
  }

  void WaitAll(size_t count) {
    for (int seen = finished.load(); seen < static_cast<int>(count); seen = finished.load()) {
      finished.wait(seen);
    }
  }

  std::unique_ptr<TempDir> disk_dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(ReconnectTest, RequestsInFlightAreResentAfterTheServerComesBack) {
  std::unique_ptr<Client> client = Connect(true, absl::Seconds(20));
  ASSERT_NE(client, nullptr);
  ASSERT_EQ(client->connections(), 2);
  std::vector<ReadRequest> reads(40);
  SubmitReads(*client, reads);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_TRUE(server_->Restart().ok());
  WaitAll(reads.size());
  for (size_t i = 0; i < reads.size(); ++i) {
    EXPECT_EQ(reads[i].completions.load(), 1) << i;
    ASSERT_TRUE(reads[i].status.ok()) << i << ": " << reads[i].status;
    for (uint64_t b = 0; b < kBlock; b += 4093) {
      ASSERT_EQ(reads[i].data[b], PatternByte(i * kBlock + b)) << "read " << i << " byte " << b;
    }
  }
  EXPECT_EQ(client->stats().reconnects, 2u);  // both connections came back
  std::vector<ClientStats> per_connection = client->connection_stats();
  ASSERT_EQ(per_connection.size(), 2u);
  uint64_t requests = 0;
  for (const ClientStats& one : per_connection) {
    EXPECT_EQ(one.reconnects, 1u);
    requests += one.requests;
  }
  EXPECT_EQ(requests, reads.size());  // each read counted once, on the connection that did it
  // New requests work on the new connections.
  std::vector<uint8_t> buffer(4096);
  ASSERT_TRUE(client->PreadSync(buffer.data(), buffer.size(), 8192).ok());
  EXPECT_EQ(buffer[0], PatternByte(8192));
}

TEST_F(ReconnectTest, GivesUpAfterTheReconnectDelay) {
  std::unique_ptr<Client> client = Connect(true, absl::Seconds(1));
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(8);
  SubmitReads(*client, reads);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  absl::Time killed_at = absl::Now();
  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  WaitAll(reads.size());
  EXPECT_LT(absl::Now() - killed_at, absl::Seconds(5));
  for (ReadRequest& read : reads) {
    EXPECT_EQ(read.completions.load(), 1);
    EXPECT_EQ(read.status.code(), absl::StatusCode::kUnavailable) << read.status;
    EXPECT_THAT(read.status.message(), HasSubstr("could not reconnect within 1000 ms"));
  }
  // With every connection gone for good, new requests fail fast instead of waiting.
  std::vector<uint8_t> buffer(4096);
  absl::Status late = client->PreadSync(buffer.data(), buffer.size(), 0);
  EXPECT_EQ(late.code(), absl::StatusCode::kUnavailable) << late;
}

TEST_F(ReconnectTest, WithoutReconnectEveryRequestFailsOnce) {
  std::unique_ptr<Client> client = Connect(false, absl::Seconds(20));
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(16);
  SubmitReads(*client, reads);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  WaitAll(reads.size());
  for (ReadRequest& read : reads) {
    EXPECT_EQ(read.completions.load(), 1);
    EXPECT_EQ(read.status.code(), absl::StatusCode::kUnavailable) << read.status;
  }
  EXPECT_EQ(client->stats().reconnects, 0u);
}

TEST_F(ReconnectTest, CloseWhileReconnectingFailsTheWaitingRequests) {
  std::unique_ptr<Client> client = Connect(true, absl::Seconds(60));
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(4);
  SubmitReads(*client, reads);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  absl::Time closing_at = absl::Now();
  EXPECT_TRUE(client->Close().ok());
  EXPECT_LT(absl::Now() - closing_at, absl::Seconds(15));
  for (ReadRequest& read : reads) {
    EXPECT_EQ(read.completions.load(), 1);
    EXPECT_THAT(read.status.message(), HasSubstr("closed while reconnecting"));
  }
}

}  // namespace
}  // namespace nbdring
