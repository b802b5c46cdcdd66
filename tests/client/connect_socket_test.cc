// Client::ConnectCommand and Client::ConnectSocket against real servers: a server on a
// socketpair (nbdkit -s, libnbd's nbd_connect_command) and a socket the caller connected.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/server_process.h"

namespace nbdring {
namespace {

using nbd::testing::ServerProcess;

// No child of this test is left unreaped (the servers ConnectCommand started included).
bool NoChildLeft() { return waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD; }

void WriteReadBack(Client& client) {
  std::vector<uint8_t> data(65536), back(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 17 + 5);
  ASSERT_TRUE(client.PwriteSync(data.data(), data.size(), 8192).ok());
  ASSERT_TRUE(client.PreadSync(back.data(), back.size(), 8192).ok());
  EXPECT_EQ(back, data);
}

TEST(ConnectCommandTest, NegotiatesWithAServerOnItsStdinAndReapsIt) {
  ClientOptions options;
  options.connections = 4;  // one socketpair: one connection, and a note saying so
  auto client = Client::ConnectCommand({"nbdkit", "-s", "memory", "16M"}, options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->size(), 16u << 20);
  EXPECT_EQ((*client)->connections(), 1);
  bool noted = false;
  for (const std::string& note : (*client)->notes()) {
    noted = noted || absl::StrContains(note, "command 'nbdkit -s memory 16M'");
  }
  EXPECT_TRUE(noted);
  WriteReadBack(**client);
  EXPECT_FALSE(NoChildLeft());  // the server runs until Close
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(NoChildLeft());
}

TEST(ConnectCommandTest, CallerDrivenToo) {
  ClientOptions options;
  options.threads = 0;
  auto client = Client::ConnectCommand({"nbdkit", "-s", "memory", "16M"}, options);
  ASSERT_TRUE(client.ok()) << client.status();
  WriteReadBack(**client);  // the Sync calls turn the ring on this thread
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(NoChildLeft());
}

TEST(ConnectCommandTest, FailuresNameTheCommandAndLeaveNoChild) {
  auto missing = Client::ConnectCommand({"no-such-nbd-server-xyz"}, ClientOptions());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "no-such-nbd-server-xyz"))
      << missing.status();
  EXPECT_EQ(Client::ConnectCommand({}, ClientOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A program that is no NBD server: the handshake fails, naming the command.
  auto not_a_server = Client::ConnectCommand({"true"}, ClientOptions());
  EXPECT_FALSE(not_a_server.ok());
  EXPECT_TRUE(absl::StrContains(not_a_server.status().message(), "command 'true'"))
      << not_a_server.status();
  ClientOptions reconnect;
  reconnect.reconnect = true;
  EXPECT_EQ(Client::ConnectCommand({"nbdkit", "-s", "memory", "1M"}, reconnect).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(NoChildLeft());
}

int ConnectUnix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(ConnectSocketTest, NegotiatesOverACallersSocketAndOwnsIt) {
  auto server = ServerProcess::StartNbdkit({"memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  const int fd = ConnectUnix((*server)->socket_path());
  ASSERT_GE(fd, 0) << std::strerror(errno);
  auto client = Client::ConnectSocket(fd, ClientOptions());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->size(), 16u << 20);
  WriteReadBack(**client);
  EXPECT_TRUE((*client)->Close().ok());
  client->reset();
  EXPECT_EQ(fcntl(fd, F_GETFD), -1) << "the client did not close the socket it was given";

  // Refused options still take the socket: it is closed, not leaked.
  const int refused_fd = ConnectUnix((*server)->socket_path());
  ASSERT_GE(refused_fd, 0);
  ClientOptions reconnect;
  reconnect.reconnect = true;
  EXPECT_EQ(Client::ConnectSocket(refused_fd, reconnect).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fcntl(refused_fd, F_GETFD), -1);
  EXPECT_EQ(Client::ConnectSocket(-1, ClientOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace nbdring
