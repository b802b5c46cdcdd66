// How requests are spread over connections: to the least loaded one, and among equally loaded
// ones not always to the same. Against a real nbdkit with multi-conn.
#include <vector>

#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;

TEST(DispatchTest, EquallyLoadedConnectionsTakeTurns) {
  // One request at a time: every connection is idle whenever a request is dispatched, so
  // each choice is a tie. Breaking ties always the same way sent everything to connection 1
  // (and, at hundreds of connections under load, starved the last ones).
  auto server = ServerProcess::StartNbdkit({"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  options.connections = 4;
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_EQ((*client)->connections(), 4);
  std::vector<uint8_t> buffer(4096);
  constexpr int kRequests = 40;
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE((*client)->PreadSync(buffer.data(), buffer.size(), 4096 * i).ok());
  }
  const std::vector<ClientStats> per_connection = (*client)->connection_stats();
  ASSERT_EQ(per_connection.size(), 4u);
  for (size_t i = 0; i < per_connection.size(); ++i) {
    EXPECT_EQ(per_connection[i].requests, kRequests / 4u) << "connection " << i + 1;
  }
}

}  // namespace
}  // namespace nbdring
