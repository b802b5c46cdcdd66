// ClientOptions::reconnect against a real nbdkit that is killed with requests in flight and
// started again on the same socket (file plugin, so the data survives the restart).
#include <signal.h>

#include <filesystem>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
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
using ::testing::HasSubstr;

constexpr uint64_t kDiskBytes = 16 << 20;
constexpr uint64_t kBlock = 64 * 1024;

// Waits for the client are bounded: a lost completion fails the test instead of hanging it.
constexpr absl::Duration kWait = absl::Seconds(10);

struct ReadRequest : Operation {
  std::vector<uint8_t> data = std::vector<uint8_t>(kBlock);
};

// The inodes of the sockets this process has open.
std::set<std::string> OpenSockets() {
  std::set<std::string> sockets;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", error)) {
    std::string target = std::filesystem::read_symlink(entry.path(), error).string();
    if (!error && absl::StartsWith(target, "socket:")) sockets.insert(target);
  }
  return sockets;
}

uint8_t PatternByte(uint64_t offset) { return static_cast<uint8_t>(offset * 131 + (offset >> 16)); }

class ReconnectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    disk_dir_ = *std::move(dir);
    std::string path = disk_dir_->File("disk.img");
    ASSERT_TRUE(WriteDiskImage(path, kDiskBytes, PatternByte).ok());
    // Reads take 300 ms, so they are really in flight when the server dies.
    auto server = ServerProcess::StartNbdkit({"--filter=delay", "file", path, "rdelay=300ms"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Client> Connect(bool reconnect, absl::Duration delay, int attempts = 0) {
    ClientOptions options;
    options.uri = server_->uri();
    options.connections = 2;
    options.reconnect = reconnect;
    options.reconnect_delay = delay;
    options.reconnect_attempts = attempts;
    const std::set<std::string> before = OpenSockets();
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    // The sockets Connect opened and kept are the client's connections.
    client_sockets_.clear();
    for (const std::string& socket : OpenSockets()) {
      if (before.count(socket) == 0) client_sockets_.insert(socket);
    }
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Submits the reads and waits until every one is on the wire.
  void SubmitReads(Client& client, std::vector<ReadRequest>& reads) {
    const uint64_t sent_before = client.stats().wire_requests;
    for (size_t i = 0; i < reads.size(); ++i) {
      reads[i].command = Command::kRead;
      reads[i].offset = i * kBlock;
      reads[i].length = kBlock;
      reads[i].buffer = reads[i].data.data();
      tracker_.Submit(client, &reads[i]);
    }
    ASSERT_TRUE(WaitUntil(
        [&] { return client.stats().wire_requests >= sent_before + reads.size(); }, kWait))
        << client.stats().wire_requests - sent_before << " of " << reads.size() << " sent";
  }

  // Kills the server and waits until the client has noticed: it closes the sockets of its
  // lost connections (and, with reconnect on, is reconnecting from then on).
  void KillServerAndWaitUntilTheClientNoticed() {
    ASSERT_EQ(client_sockets_.size(), 2u) << "expected one socket per connection";
    server_->Kill(SIGKILL);
    ASSERT_TRUE(server_->Wait().ok());
    ASSERT_TRUE(WaitUntil(
        [&] {
          const std::set<std::string> open = OpenSockets();
          for (const std::string& socket : client_sockets_) {
            if (open.count(socket) != 0) return false;
          }
          return true;
        },
        kWait))
        << "the client kept its connections to the dead server open";
  }

  std::unique_ptr<TempDir> disk_dir_;
  std::unique_ptr<ServerProcess> server_;
  std::set<std::string> client_sockets_;
  // Declared before the clients the tests hold, which complete everything when destroyed.
  CompletionTracker tracker_;
};

TEST_F(ReconnectTest, RequestsInFlightAreResentAfterTheServerComesBack) {
  std::unique_ptr<Client> client = Connect(true, absl::Seconds(20));
  ASSERT_NE(client, nullptr);
  ASSERT_EQ(client->connections(), 2);
  std::vector<ReadRequest> reads(40);
  ASSERT_NO_FATAL_FAILURE(SubmitReads(*client, reads));
  ASSERT_NO_FATAL_FAILURE(KillServerAndWaitUntilTheClientNoticed());
  // The outage: the server stays down a while longer, so reconnect attempts fail and back off
  // before one succeeds (the server's behaviour, not a wait for the client).
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(server_->Restart().ok());
  ASSERT_TRUE(tracker_.WaitFor(reads.size(), absl::Seconds(30)))
      << tracker_.completed() << " of " << reads.size() << " reads completed";
  EXPECT_TRUE(tracker_.ExactlyOnce());
  for (size_t i = 0; i < reads.size(); ++i) {
    EXPECT_EQ(tracker_.completions(&reads[i]), 1) << i;
    ASSERT_TRUE(tracker_.status(&reads[i]).ok()) << i << ": " << tracker_.status(&reads[i]);
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
  ASSERT_NO_FATAL_FAILURE(SubmitReads(*client, reads));
  absl::Time killed_at = absl::Now();
  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  ASSERT_TRUE(tracker_.WaitFor(reads.size(), kWait))
      << tracker_.completed() << " of " << reads.size() << " reads completed";
  EXPECT_LT(absl::Now() - killed_at, absl::Seconds(5));
  for (ReadRequest& read : reads) {
    EXPECT_EQ(tracker_.completions(&read), 1);
    const absl::Status status = tracker_.status(&read);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_THAT(status.message(), HasSubstr("could not reconnect within 1000 ms"));
  }
  // With every connection gone for good, new requests fail fast instead of waiting.
  std::vector<uint8_t> buffer(4096);
  absl::Status late = client->PreadSync(buffer.data(), buffer.size(), 0);
  EXPECT_EQ(late.code(), absl::StatusCode::kUnavailable) << late;
}

TEST_F(ReconnectTest, GivesUpAfterTheAttemptsAllowed) {
  // Two attempts (0.1 s apart) end the series long before the 30 s delay would.
  std::unique_ptr<Client> client = Connect(true, absl::Seconds(30), /*attempts=*/2);
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(4);
  ASSERT_NO_FATAL_FAILURE(SubmitReads(*client, reads));
  const absl::Time killed_at = absl::Now();
  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  ASSERT_TRUE(tracker_.WaitFor(reads.size(), kWait));
  EXPECT_LT(absl::Now() - killed_at, absl::Seconds(5));
  for (ReadRequest& read : reads) {
    EXPECT_EQ(tracker_.completions(&read), 1);
    const absl::Status status = tracker_.status(&read);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_THAT(status.message(), HasSubstr("gave up after 2 attempt(s)"));
  }
}

TEST_F(ReconnectTest, WithoutReconnectEveryRequestFailsOnce) {
  std::unique_ptr<Client> client = Connect(false, absl::Seconds(20));
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(16);
  ASSERT_NO_FATAL_FAILURE(SubmitReads(*client, reads));
  server_->Kill(SIGKILL);
  ASSERT_TRUE(server_->Wait().ok());
  ASSERT_TRUE(tracker_.WaitFor(reads.size(), kWait))
      << tracker_.completed() << " of " << reads.size() << " reads completed";
  for (ReadRequest& read : reads) {
    EXPECT_EQ(tracker_.completions(&read), 1);
    EXPECT_EQ(tracker_.status(&read).code(), absl::StatusCode::kUnavailable)
        << tracker_.status(&read);
  }
  EXPECT_EQ(client->stats().reconnects, 0u);
}

TEST_F(ReconnectTest, CloseWhileReconnectingFailsTheWaitingRequests) {
  std::unique_ptr<Client> client = Connect(true, absl::Seconds(60));
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(4);
  ASSERT_NO_FATAL_FAILURE(SubmitReads(*client, reads));
  ASSERT_NO_FATAL_FAILURE(KillServerAndWaitUntilTheClientNoticed());
  absl::Time closing_at = absl::Now();
  EXPECT_TRUE(client->Close().ok());
  EXPECT_LT(absl::Now() - closing_at, absl::Seconds(15));
  // Close returns once every callback ran.
  EXPECT_EQ(tracker_.completed(), reads.size());
  for (ReadRequest& read : reads) {
    EXPECT_EQ(tracker_.completions(&read), 1);
    EXPECT_THAT(tracker_.status(&read).message(), HasSubstr("closed while reconnecting"));
  }
}

}  // namespace
}  // namespace nbdring
