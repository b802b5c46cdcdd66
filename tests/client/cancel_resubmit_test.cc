// Cancel names a submission, not an Operation: an Operation resubmitted from its own
// completion callback must not be cancelled by a Cancel meant for the submission that just
// completed (Cancel used to match "the Operation as submitted most recently", so a late
// Cancel hit the resubmission), while a Cancel with the new id does cancel it.
#include <atomic>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbdring::testing::CompletionTracker;

class CancelResubmitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Reads take 300 ms on the server, so a resubmitted read is on the wire when the
    // callback cancels.
    auto server = ServerProcess::StartNbdkit({"--filter=delay", "memory", "16M", "rdelay=300ms"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ClientOptions options;
    options.uri = server_->uri();
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    read_.command = Command::kRead;
    read_.length = buffer_.size();
    read_.buffer = buffer_.data();
  }

  // Submits the read; its first completion resubmits it and then cancels submission
  // `which` (the first or the second), from inside the callback.
  void RunResubmitThenCancel(bool cancel_the_new_submission) {
    std::atomic<uint64_t> first_id{0};
    CompletionTracker* tracker_pointer = nullptr;
    CompletionTracker tracker([&](Operation* operation, const absl::Status&) {
      if (tracker_pointer->completions(operation) != 1) return;
      tracker_pointer->Submitted(operation);
      const uint64_t second_id = client_->Submit(operation);
      client_->Cancel(operation, cancel_the_new_submission ? second_id : first_id.load());
    });
    tracker_pointer = &tracker;
    tracker.Track(&read_);
    tracker.Submitted(&read_);
    first_id = client_->Submit(&read_);
    ASSERT_TRUE(tracker.WaitFor(2, absl::Seconds(20)));
    EXPECT_TRUE(tracker.ExactlyOnce());
    status_ = tracker.status(&read_);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
  std::vector<uint8_t> buffer_ = std::vector<uint8_t>(4096);
  Operation read_;
  absl::Status status_;
};

TEST_F(CancelResubmitTest, AStaleIdDoesNotCancelTheResubmission) {
  RunResubmitThenCancel(/*cancel_the_new_submission=*/false);
  EXPECT_TRUE(status_.ok()) << "the second submission completed with " << status_;
}

TEST_F(CancelResubmitTest, TheNewIdCancelsTheResubmission) {
  RunResubmitThenCancel(/*cancel_the_new_submission=*/true);
  EXPECT_EQ(status_.code(), absl::StatusCode::kCancelled) << status_;
}

TEST_F(CancelResubmitTest, IdsAreUniqueAndNeverZero) {
  CompletionTracker tracker;
  const uint64_t first = tracker.Submit(*client_, &read_);
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(10)));
  const uint64_t second = tracker.Submit(*client_, &read_);
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(10)));
  EXPECT_NE(first, 0u);
  EXPECT_NE(second, 0u);
  EXPECT_NE(first, second);
  client_->Cancel(&read_, 0);  // never a submission: nothing happens
  client_->Cancel(&read_, first);
  EXPECT_TRUE(tracker.ExactlyOnce());
}

}  // namespace
}  // namespace nbdring
