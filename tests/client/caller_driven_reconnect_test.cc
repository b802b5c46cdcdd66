// Reconnecting in caller-driven mode (threads = 0, reconnect on) against a real nbdkit that
// is killed with requests in flight and started again on the same socket: the attempts run
// inside Poll's turns (no thread, ever), the ring wakes for the socket and the back-off, and
// Client::fd() becomes readable for them, so a caller that only sleeps in epoll gets there.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"
#include "tests/testing/threads.h"
#include "tests/testing/tls_credentials.h"

namespace nbdring {
namespace {

using ::nbdring::testing::ThreadCount;
using ::nbdring::testing::ThreadCountBaseline;

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::nbd::testing::TlsCredentials;
using ::nbd::testing::WriteDiskImage;
using ::nbdring::testing::CompletionTracker;

constexpr uint64_t kDiskBytes = 16 << 20;
constexpr uint64_t kBlock = 64 * 1024;
constexpr absl::Duration kWait = absl::Seconds(30);

uint8_t PatternByte(uint64_t offset) { return static_cast<uint8_t>(offset * 131 + (offset >> 16)); }

struct ReadRequest : Operation {
  std::vector<uint8_t> data = std::vector<uint8_t>(kBlock);
};

// A "server" that takes connections (the kernel queues them on its backlog) and never says a
// word: every reconnect attempt connects and then waits for a greeting that never comes.
class SilentListener {
 public:
  explicit SilentListener(const std::string& path) : fd_(socket(AF_UNIX, SOCK_STREAM, 0)) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    unlink(path.c_str());
    ok_ = fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
          listen(fd_, 64) == 0;
  }
  ~SilentListener() {
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return ok_; }

 private:
  int fd_;
  bool ok_ = false;
};

// How the test turns the client: Poll() with a bounded wait, or only after epoll says
// Client::fd() is readable (then Poll(0), which must not wait).
enum class Driver { kPoll, kEpoll };

class CallerDrivenReconnectTest : public ::testing::TestWithParam<Driver> {
 protected:
  void SetUp() override {
    threads_before_ = ThreadCountBaseline();
    auto dir = TempDir::Create();
    ASSERT_TRUE(dir.ok()) << dir.status();
    disk_dir_ = *std::move(dir);
    disk_path_ = disk_dir_->File("disk.img");
    ASSERT_TRUE(WriteDiskImage(disk_path_, kDiskBytes, PatternByte).ok());
  }

  void TearDown() override {
    if (epoll_ >= 0) close(epoll_);
  }

  void StartServer(std::vector<std::string> extra = {}) {
    // Reads take 300 ms, so they are really in flight when the server dies.
    std::vector<std::string> argv = std::move(extra);
    for (const char* arg : {"--filter=delay", "file"}) argv.push_back(arg);
    argv.push_back(disk_path_);
    argv.push_back("rdelay=300ms");
    auto server = ServerProcess::StartNbdkit(argv);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Client> Connect(ClientOptions options) {
    options.threads = 0;
    options.reconnect = true;
    if (options.uri.empty()) options.uri = server_->uri();
    auto client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    if (!client.ok()) return nullptr;
    if (GetParam() == Driver::kEpoll) {
      epoll_ = epoll_create1(EPOLL_CLOEXEC);
      epoll_event watch{};
      watch.events = EPOLLIN;
      EXPECT_EQ(epoll_ctl(epoll_, EPOLL_CTL_ADD, (*client)->fd(), &watch), 0);
    }
    return *std::move(client);
  }

  // One turn of the caller's loop.
  void Turn(Client& client) {
    if (GetParam() == Driver::kPoll) {
      absl::Status polled = client.Poll(absl::Milliseconds(100));
      ASSERT_TRUE(polled.ok()) << polled;
      return;
    }
    epoll_event event;
    if (epoll_wait(epoll_, &event, 1, 100) == 1) {
      absl::Status polled = client.Poll(absl::ZeroDuration());
      ASSERT_TRUE(polled.ok()) << polled;
    }
  }

  // Turns the client until `done` or `timeout`; the thread count never changes meanwhile.
  bool TurnUntil(Client& client, const std::function<bool()>& done,
                 absl::Duration timeout = kWait) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!done()) {
      if (absl::Now() > deadline) return false;
      Turn(client);
      if (::testing::Test::HasFatalFailure()) return false;
      EXPECT_EQ(ThreadCount(), threads_before_) << "caller-driven mode started a thread";
    }
    return true;
  }

  // `reads` go out on `client`, then the server dies and a SilentListener takes its socket:
  // from then on every reconnect attempt connects and hangs in the handshake.
  void LoseServerToASilentListener(Client& client, std::vector<ReadRequest>& reads) {
    SubmitReads(client, reads, 0);
    ASSERT_TRUE(TurnUntil(client, [&] { return client.stats().wire_requests >= reads.size(); }));
    server_->Kill(SIGKILL);
    ASSERT_TRUE(server_->Wait().ok());
    silent_ = std::make_unique<SilentListener>(server_->socket_path());
    ASSERT_TRUE(silent_->ok());
  }

  void SubmitReads(Client& client, std::vector<ReadRequest>& reads, uint64_t first_block) {
    for (size_t i = 0; i < reads.size(); ++i) {
      reads[i].command = Command::kRead;
      reads[i].offset = (first_block + i) * kBlock;
      reads[i].length = kBlock;
      reads[i].buffer = reads[i].data.data();
      tracker_.Submit(client, &reads[i]);
    }
  }

  void ExpectPattern(const std::vector<ReadRequest>& reads) {
    for (const ReadRequest& read : reads) {
      ASSERT_TRUE(tracker_.status(&read).ok()) << tracker_.status(&read);
      for (uint64_t i = 0; i < kBlock; i += 4093) {
        ASSERT_EQ(read.data[i], PatternByte(read.offset + i)) << "offset " << read.offset + i;
      }
    }
  }

  // Kills the server, submits more reads during the outage, turns the client through a few
  // failing attempts, restarts the server and waits until every read completed once.
  void SurviveARestart(Client& client) {
    std::vector<ReadRequest> in_flight(8);
    SubmitReads(client, in_flight, 0);
    ASSERT_TRUE(TurnUntil(client, [&] { return client.stats().wire_requests >= in_flight.size(); }))
        << "the reads never reached the wire";
    server_->Kill(SIGKILL);
    ASSERT_TRUE(server_->Wait().ok());
    std::vector<ReadRequest> during(8);
    SubmitReads(client, during, 100);
    // The outage lasts a while: attempts are refused and back off (the client is turned all
    // along; the condition is the server's downtime, not a wait for the client).
    const absl::Time outage_end = absl::Now() + absl::Milliseconds(400);
    ASSERT_TRUE(TurnUntil(client, [&] { return absl::Now() >= outage_end; }));
    EXPECT_EQ(tracker_.completed(), 0u) << tracker_.first_error();
    ASSERT_TRUE(server_->Restart().ok());
    ASSERT_TRUE(TurnUntil(client, [&] {
      return tracker_.completed() >= in_flight.size() + during.size();
    })) << tracker_.completed() << " of " << in_flight.size() + during.size() << " completed";
    EXPECT_TRUE(tracker_.ExactlyOnce());
    EXPECT_EQ(tracker_.failed(), 0u) << tracker_.first_error();
    ExpectPattern(in_flight);
    ExpectPattern(during);
    EXPECT_GE(client.stats().reconnects, 1u);

    // I/O works afterwards.
    std::vector<uint8_t> written(kBlock, 0x5a);
    std::vector<uint8_t> read_back(kBlock);
    Operation write;
    write.command = Command::kWrite;
    write.offset = 200 * kBlock;
    write.length = kBlock;
    write.buffer = written.data();
    tracker_.Submit(client, &write);
    ASSERT_TRUE(TurnUntil(client, [&] { return tracker_.completions(&write) == 1; }));
    ASSERT_TRUE(tracker_.status(&write).ok()) << tracker_.status(&write);
    Operation read;
    read.command = Command::kRead;
    read.offset = 200 * kBlock;
    read.length = kBlock;
    read.buffer = read_back.data();
    tracker_.Submit(client, &read);
    ASSERT_TRUE(TurnUntil(client, [&] { return tracker_.completions(&read) == 1; }));
    ASSERT_TRUE(tracker_.status(&read).ok()) << tracker_.status(&read);
    EXPECT_EQ(read_back, written);
    EXPECT_TRUE(tracker_.ExactlyOnce());
  }

  int threads_before_ = 0;
  std::unique_ptr<TempDir> disk_dir_;
  std::string disk_path_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<SilentListener> silent_;  // in the server's place, once it is lost
  int epoll_ = -1;
  // Declared before the clients the tests hold, which complete everything when destroyed.
  CompletionTracker tracker_;
};

TEST_P(CallerDrivenReconnectTest, RequestsSurviveAServerRestartWithoutAThread) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ClientOptions options;
  options.connections = 2;
  options.reconnect_delay = absl::Seconds(20);
  std::unique_ptr<Client> client = Connect(options);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(ThreadCount(), threads_before_);
  ASSERT_NO_FATAL_FAILURE(SurviveARestart(*client));
  ASSERT_TRUE(client->Close().ok());
  EXPECT_EQ(ThreadCount(), threads_before_);
}

TEST_P(CallerDrivenReconnectTest, ReconnectsOverTlsWithPsk) {
  auto credentials = TlsCredentials::Create();
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  ASSERT_NO_FATAL_FAILURE(StartServer(
      {"--tls=require", absl::StrCat("--tls-psk=", (*credentials)->psk_file())}));
  ClientOptions options;
  options.uri = absl::StrCat("nbds+unix:///?socket=", server_->socket_path(),
                             "&tls-psk-file=", (*credentials)->psk_file());
  options.reconnect_delay = absl::Seconds(20);
  std::unique_ptr<Client> client = Connect(options);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->export_info().tls);
  ASSERT_NO_FATAL_FAILURE(SurviveARestart(*client));
  ASSERT_TRUE(client->Close().ok());
  EXPECT_EQ(ThreadCount(), threads_before_);
}

TEST_P(CallerDrivenReconnectTest, CloseWhileReconnectingToASilentServerFailsQueuedRequests) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ClientOptions options;
  options.reconnect_delay = absl::Seconds(60);
  options.connect_timeout = absl::Seconds(60);
  std::unique_ptr<Client> client = Connect(options);
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(4);
  ASSERT_NO_FATAL_FAILURE(LoseServerToASilentListener(*client, reads));
  // Turn long enough for the loss to be seen and an attempt to hang in the handshake.
  const absl::Time until = absl::Now() + absl::Milliseconds(300);
  ASSERT_TRUE(TurnUntil(*client, [&] { return absl::Now() >= until; }));
  EXPECT_EQ(tracker_.completed(), 0u) << tracker_.first_error();
  const absl::Time close_started = absl::Now();
  client->Close().IgnoreError();  // the requests failed: that is the point
  EXPECT_LT(absl::Now() - close_started, absl::Seconds(5)) << "Close waited for the server";
  ASSERT_TRUE(tracker_.WaitFor(reads.size(), absl::ZeroDuration()))
      << tracker_.completed() << " of " << reads.size() << " completed by Close";
  EXPECT_TRUE(tracker_.ExactlyOnce());
  EXPECT_EQ(tracker_.failed(), reads.size());
  EXPECT_EQ(ThreadCount(), threads_before_);
}

TEST_P(CallerDrivenReconnectTest, GivesUpWhenTheDelayEndsWhileAttemptsHang) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ClientOptions options;
  options.reconnect_delay = absl::Seconds(1);
  options.connect_timeout = absl::Milliseconds(300);  // each attempt times out in the handshake
  std::unique_ptr<Client> client = Connect(options);
  ASSERT_NE(client, nullptr);
  std::vector<ReadRequest> reads(4);
  ASSERT_NO_FATAL_FAILURE(LoseServerToASilentListener(*client, reads));
  // Only the ring's timers can end this: the silent server never makes a socket ready.
  ASSERT_TRUE(TurnUntil(*client, [&] { return tracker_.completed() >= reads.size(); },
                        absl::Seconds(10)))
      << tracker_.completed() << " of " << reads.size() << " completed";
  EXPECT_TRUE(tracker_.ExactlyOnce());
  EXPECT_EQ(tracker_.failed(), reads.size());
  EXPECT_EQ(tracker_.status(&reads[0]).code(), absl::StatusCode::kUnavailable)
      << tracker_.status(&reads[0]);
  EXPECT_NE(tracker_.status(&reads[0]).message().find("could not reconnect"), std::string::npos)
      << tracker_.status(&reads[0]);
  client->Close().IgnoreError();
  EXPECT_EQ(ThreadCount(), threads_before_);
}

INSTANTIATE_TEST_SUITE_P(Drivers, CallerDrivenReconnectTest,
                         ::testing::Values(Driver::kPoll, Driver::kEpoll),
                         [](const ::testing::TestParamInfo<Driver>& info) {
                           return info.param == Driver::kPoll ? "Poll" : "Epoll";
                         });

}  // namespace
}  // namespace nbdring
