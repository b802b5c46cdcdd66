// Every duration in ClientOptions may be absl::InfiniteDuration(). absl converts it to
// INT64_MAX nanoseconds; adding that to "now" overflowed (undefined behaviour, which the
// ASan+UBSan configuration turns into a failure) in the handshake's poll timeout, the request
// deadlines and the reconnect deadline. Run under --config=asan to see it.
#include <signal.h>

#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;

TEST(InfiniteTimeoutsTest, ConnectReadWriteReconnectAndClose) {
  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  options.connect_timeout = absl::InfiniteDuration();
  options.request_timeout = absl::InfiniteDuration();
  options.close_timeout = absl::InfiniteDuration();
  options.reconnect = true;
  options.reconnect_delay = absl::InfiniteDuration();
  options.completion_batch_delay = absl::InfiniteDuration();
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  std::vector<uint8_t> written(64 * 1024, 0x3C);
  std::vector<uint8_t> read(written.size());
  ASSERT_TRUE((*client)->PwriteSync(written.data(), written.size(), 0).ok());
  ASSERT_TRUE((*client)->PreadSync(read.data(), read.size(), 0).ok());
  EXPECT_EQ(read, written);

  // A reconnect with an infinite delay (memory is lost with the server: only the connection
  // is checked here).
  (*server)->Kill(SIGKILL);
  ASSERT_TRUE((*server)->Wait().ok());
  ASSERT_TRUE((*server)->Restart().ok());
  ASSERT_TRUE(testing::WaitUntil([&] { return (*client)->FlushSync().ok(); }, absl::Seconds(30)));
  EXPECT_GE((*client)->stats().reconnects, 1u);
  EXPECT_TRUE((*client)->Close().ok());
}

}  // namespace
}  // namespace nbdring
