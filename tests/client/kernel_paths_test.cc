// Client::notes() says which io_uring paths the rings took, and NBDRING_DISABLE_FEATURES
// forces the fallbacks a kernel without each feature takes (runtime/uring_compat.h); the
// client works on each. Real nbdkit; the paths are checked by what the note names and by
// requests completing on them.
#include <stdlib.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbdring::testing::CompletionTracker;

std::string RingNote(const Client& client) {
  for (const std::string& note : client.notes()) {
    if (absl::StartsWith(note, "io_uring: ")) return note;
  }
  return "";
}

// Connects with NBDRING_DISABLE_FEATURES=`disabled` (unset when empty), runs 64 reads and
// writes 16 deep with batching on, and returns the ring note.
std::string NoteAfterTraffic(const std::string& disabled) {
  if (disabled.empty()) {
    unsetenv("NBDRING_DISABLE_FEATURES");
  } else {
    setenv("NBDRING_DISABLE_FEATURES", disabled.c_str(), 1);
  }
  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return "";
  ClientOptions options;
  options.uri = (*server)->uri();
  options.inflight_limit = 16;
  auto client = Client::Connect(options);
  unsetenv("NBDRING_DISABLE_FEATURES");  // read by the rings at start only
  EXPECT_TRUE(client.ok()) << client.status();
  if (!client.ok()) return "";

  constexpr int kRequests = 64;
  constexpr uint64_t kBlock = 4096;
  std::vector<uint8_t> data(kRequests * kBlock, 0x5a);
  std::vector<uint8_t> back(kRequests * kBlock, 0);
  std::vector<Operation> writes(kRequests), reads(kRequests);
  CompletionTracker tracker;
  for (int i = 0; i < kRequests; ++i) {
    writes[i].command = Command::kWrite;
    writes[i].offset = i * kBlock;
    writes[i].length = kBlock;
    writes[i].buffer = data.data() + i * kBlock;
    tracker.Submit(**client, &writes[i]);
  }
  EXPECT_TRUE(tracker.WaitForAll(absl::Seconds(30)));
  for (int i = 0; i < kRequests; ++i) {
    reads[i].command = Command::kRead;
    reads[i].offset = i * kBlock;
    reads[i].length = kBlock;
    reads[i].buffer = back.data() + i * kBlock;
    tracker.Submit(**client, &reads[i]);
  }
  EXPECT_TRUE(tracker.WaitForAll(absl::Seconds(30)));
  EXPECT_TRUE(tracker.ExactlyOnce());
  EXPECT_TRUE(tracker.first_error().ok()) << tracker.first_error();
  EXPECT_EQ(back, data);
  EXPECT_TRUE((*client)->Close().ok());
  return RingNote(**client);
}

TEST(KernelPathsTest, NotesNameTheRingSetupAndHowCompletionsAreBatched) {
  const std::string note = NoteAfterTraffic("");
  EXPECT_TRUE(absl::StrContains(note, "SUBMIT_ALL") || absl::StrContains(note, "plain")) << note;
  EXPECT_TRUE(absl::StrContains(note, "completion batching")) << note;
}

TEST(KernelPathsTest, TimedWaitsWhenMinWaitIsDisabled) {
  const std::string note = NoteAfterTraffic("min_wait");
  EXPECT_TRUE(absl::StrContains(note, "timed waits")) << note;
  EXPECT_FALSE(absl::StrContains(note, "(min_wait)")) << note;
}

TEST(KernelPathsTest, NoDeferTaskrunWhenDisabled) {
  const std::string note = NoteAfterTraffic("defer_taskrun, min_wait");
  EXPECT_FALSE(absl::StrContains(note, "SINGLE_ISSUER|DEFER_TASKRUN")) << note;
  EXPECT_TRUE(absl::StrContains(note, "defer_taskrun disabled")) << note;
  EXPECT_TRUE(absl::StrContains(note, "timed waits")) << note;
}

}  // namespace
}  // namespace nbdring
