// TLS against real servers (nbdkit --tls, qemu-nbd tls-creds) with credentials made by
// certtool/psktool for the run, and the security rules with scripted servers: no plain-text
// fallback when TLS is required, nothing before the TLS handshake trusted, a stalled TLS
// handshake bounded by connect_timeout, failures in the transmission phase completing every
// request once.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/wire.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/scripted_server.h"
#include "tests/testing/server_process.h"
#include "tests/testing/tls_credentials.h"

namespace nbdring {
namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using ::nbd::testing::TlsCredentials;
using ::nbdring::testing::CompletionTracker;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);

const TlsCredentials& Credentials() {
  static const TlsCredentials* credentials = [] {
    auto made = TlsCredentials::Create();
    if (!made.ok()) {
      ADD_FAILURE() << made.status();
      std::abort();
    }
    return made->release();
  }();
  return *credentials;
}

// nbd+unix:// or nbd:// -> the nbds form.
std::string Secure(const std::string& uri) { return absl::StrCat("nbds", uri.substr(3)); }

std::string Notes(const Client& client) { return absl::StrJoin(client.notes(), "\n"); }

absl::StatusOr<std::unique_ptr<ServerProcess>> StartX509Nbdkit(const std::string& server_dir,
                                                               std::vector<std::string> plugin,
                                                               bool tcp = false) {
  std::vector<std::string> args = {"--tls=require",
                                   absl::StrCat("--tls-certificates=", server_dir)};
  args.insert(args.end(), plugin.begin(), plugin.end());
  return tcp ? ServerProcess::StartNbdkitTcp(args) : ServerProcess::StartNbdkit(args);
}

ClientOptions X509Options(const std::string& uri, const std::string& client_dir) {
  ClientOptions options;
  options.uri = Secure(uri);
  options.tls_certificates = client_dir;
  options.connect_timeout = absl::Seconds(10);
  return options;
}

uint8_t Pattern(uint64_t offset) { return static_cast<uint8_t>(offset * 7 + (offset >> 12) + 1); }

// Writes, reads back (one large read and many small ones in flight at once), flushes and
// asks for block status: the data path through TLS in both directions.
void ExerciseExport(Client& client) {
  constexpr uint64_t kLarge = 3 << 20;
  std::vector<uint8_t> data(kLarge);
  for (uint64_t i = 0; i < kLarge; ++i) data[i] = Pattern(i);
  ASSERT_TRUE(client.PwriteSync(data.data(), kLarge, 0).ok());
  ASSERT_TRUE(client.FlushSync().ok());
  std::vector<uint8_t> back(kLarge);
  ASSERT_TRUE(client.PreadSync(back.data(), kLarge, 0).ok());
  EXPECT_TRUE(back == data) << "large read through TLS differs from what was written";

  constexpr int kSmall = 64;
  std::vector<std::vector<uint8_t>> small(kSmall, std::vector<uint8_t>(4096));
  CompletionTracker tracker;
  for (int i = 0; i < kSmall; ++i) {
    client.Pread(small[i].data(), 4096, uint64_t{4096} * (i * 11 % 700), tracker.Callback());
  }
  ASSERT_TRUE(tracker.WaitFor(kSmall, kWait));
  EXPECT_EQ(tracker.failed(), 0u) << tracker.first_error();
  for (int i = 0; i < kSmall; ++i) {
    const uint64_t offset = uint64_t{4096} * (i * 11 % 700);
    for (uint64_t j = 0; j < 4096; j += 509) {
      ASSERT_EQ(small[i][j], Pattern(offset + j)) << "small read " << i << " byte " << j;
    }
  }
  std::vector<std::pair<uint32_t, std::vector<Extent>>> extents;
  ASSERT_TRUE(client.BlockStatusSync(1 << 20, 0, &extents).ok());
  ASSERT_FALSE(extents.empty());
  EXPECT_FALSE(extents.front().second.empty());
}

TEST(TlsTest, X509ReadWriteFlushBlockStatusOverTwoConnections) {
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "64M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options = X509Options((*server)->uri(), Credentials().client_dir());
  options.tls_hostname = "localhost";
  options.connections = 2;
  options.meta_contexts = {"base:allocation"};
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->connections(), 2);
  EXPECT_TRUE((*client)->export_info().tls);
  EXPECT_THAT(Notes(**client), HasSubstr("TLS with X.509"));
  ExerciseExport(**client);
  EXPECT_TRUE((*client)->Close().ok());
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

TEST(TlsTest, CloseSendsDiscThenCloseNotify) {
  // The server must see NBD_CMD_DISC inside TLS and then the end of the TLS session, not a
  // connection cut short ("The TLS connection was non-properly terminated").
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"-v", "memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options = X509Options((*server)->uri(), Credentials().client_dir());
  options.connections = 4;
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> buffer(4096);
  ASSERT_TRUE((*client)->PreadSync(buffer.data(), buffer.size(), 0).ok());
  ASSERT_TRUE((*client)->Close().ok());
  const std::string log_path = (*server)->dir().File("server.log");
  auto count = [&](const std::string& text) {
    const std::string log = ReadFile(log_path);
    int found = 0;
    for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++found;
    return found;
  };
  // nbdkit logs the plugin's close once it is done with a connection, errors before it.
  ASSERT_TRUE(testing::WaitUntil([&] { return count("memory: close") >= 4; }, kWait))
      << ReadFile(log_path);
  EXPECT_EQ(count("client sent NBD_CMD_DISC"), 4) << ReadFile(log_path);
  EXPECT_EQ(count("non-properly terminated"), 0) << ReadFile(log_path);
}

TEST(TlsTest, UriCarriesLibnbdTlsKeys) {
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = absl::StrCat(Secure((*server)->uri()),
                             "&tls-certificates=", Credentials().client_dir(),
                             "&tls-hostname=localhost");
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> data(4096, 0x5a), back(4096);
  ASSERT_TRUE((*client)->PwriteSync(data.data(), 4096, 8192).ok());
  ASSERT_TRUE((*client)->PreadSync(back.data(), 4096, 8192).ok());
  EXPECT_EQ(back, data);
}

TEST(TlsTest, TcpChecksTheHostName) {
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "8M"}, /*tcp=*/true);
  ASSERT_TRUE(server.ok()) << server.status();
  // The certificate names 127.0.0.1, the URI's host: verified by default.
  auto client = Client::Connect(X509Options((*server)->uri(), Credentials().client_dir()));
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_THAT(Notes(**client), HasSubstr("host name '127.0.0.1'"));

  ClientOptions other = X509Options((*server)->uri(), Credentials().client_dir());
  other.tls_hostname = "nbd.example";
  auto refused = Client::Connect(other);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << refused.status();
}

TEST(TlsTest, CertificateFromAnotherCaIsRefused) {
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect(X509Options((*server)->uri(), Credentials().other_ca_dir()));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnauthenticated) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr("certificate"));
}

TEST(TlsTest, VerifyPeerOffAcceptsAnUntrustedCertificate) {
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options = X509Options((*server)->uri(), Credentials().other_ca_dir());
  options.uri += "&tls-verify-peer=0";
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_THAT(Notes(**client), HasSubstr("NOT verified"));
}

TEST(TlsTest, ExpiredCertificateIsRefused) {
  auto server = StartX509Nbdkit(Credentials().expired_server_dir(), {"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect(X509Options((*server)->uri(), Credentials().client_dir()));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnauthenticated) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr("expired"));
}

TEST(TlsTest, CertificateForAnotherHostIsRefused) {
  auto server = StartX509Nbdkit(Credentials().other_host_server_dir(), {"memory", "8M"},
                                /*tcp=*/true);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect(X509Options((*server)->uri(), Credentials().client_dir()));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnauthenticated) << client.status();
}

TEST(TlsTest, PreSharedKey) {
  auto server = ServerProcess::StartNbdkit(
      {"--tls=require", absl::StrCat("--tls-psk=", Credentials().psk_file()), "memory", "16M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = absl::StrCat("nbds+unix://alice@/?socket=", (*server)->socket_path(),
                             "&tls-psk-file=", Credentials().psk_file());
  options.meta_contexts = {"base:allocation"};
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_THAT(Notes(**client), HasSubstr("pre-shared key (user 'alice'"));
  ExerciseExport(**client);

  ClientOptions wrong;
  wrong.uri = Secure((*server)->uri());
  wrong.tls_psk_file = Credentials().wrong_psk_file();
  wrong.tls_username = "alice";
  auto refused = Client::Connect(wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << refused.status();

  ClientOptions unknown_user = wrong;
  unknown_user.tls_psk_file = Credentials().psk_file();
  unknown_user.tls_username = "bob";
  auto no_key = Client::Connect(unknown_user);
  ASSERT_FALSE(no_key.ok());
  EXPECT_EQ(no_key.status().code(), absl::StatusCode::kInvalidArgument) << no_key.status();
  EXPECT_THAT(no_key.status().message(), HasSubstr("no key for user 'bob'"));
}

TEST(TlsTest, PlainTextClientIsRefusedByATlsOnlyServer) {
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.uri = (*server)->uri();
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr("requires TLS"));
}

TEST(TlsTest, RequiredTlsNeverFallsBackToPlainText) {
  auto server = ServerProcess::StartNbdkit({"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect(X509Options((*server)->uri(), Credentials().client_dir()));
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(client.status().message(), HasSubstr("TLS is required"));

  // Allowed (opportunistic) TLS goes on in plain text, and says so.
  ClientOptions allow;
  allow.uri = (*server)->uri();
  allow.tls = ClientOptions::Tls::kAllow;
  allow.tls_certificates = Credentials().client_dir();
  auto plain = Client::Connect(allow);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE((*plain)->export_info().tls);
  EXPECT_THAT(Notes(**plain), HasSubstr("TLS allowed but not used"));
}

TEST(TlsTest, AllowedTlsIsUsedWhenTheServerOffersIt) {
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "8M"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions allow;
  allow.uri = (*server)->uri();
  allow.tls = ClientOptions::Tls::kAllow;
  allow.tls_certificates = Credentials().client_dir();
  auto client = Client::Connect(allow);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->export_info().tls);
}

TEST(TlsTest, NbdsWithTlsDisabledIsAContradiction) {
  ClientOptions options;
  options.uri = "nbds+unix:///?socket=/nonexistent";
  options.tls = ClientOptions::Tls::kDisable;
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument) << client.status();
}

TEST(TlsTest, QemuNbdX509AndPsk) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok());
  const std::string image = (*dir)->File("disk.raw");
  ASSERT_TRUE(nbd::testing::WriteDiskImage(image, 8 << 20, Pattern).ok());
  {
    auto server = ServerProcess::StartQemuNbd(
        image, "raw", 8,
        {"--object",
         absl::StrCat("tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir=",
                      Credentials().server_dir()),
         "--tls-creds", "tls0"});
    ASSERT_TRUE(server.ok()) << server.status();
    ClientOptions options = X509Options((*server)->uri(), Credentials().client_dir());
    options.tls_hostname = "localhost";
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    std::vector<uint8_t> back(1 << 20);
    ASSERT_TRUE((*client)->PreadSync(back.data(), back.size(), 4096).ok());
    for (uint64_t i = 0; i < back.size(); i += 4093) ASSERT_EQ(back[i], Pattern(4096 + i));
  }
  {
    auto server = ServerProcess::StartQemuNbd(
        image, "raw", 8,
        {"--object",
         absl::StrCat("tls-creds-psk,id=tls0,endpoint=server,dir=", Credentials().psk_dir()),
         "--tls-creds", "tls0"});
    ASSERT_TRUE(server.ok()) << server.status();
    ClientOptions options;
    options.uri = Secure((*server)->uri());
    options.tls_psk_file = Credentials().psk_file();
    options.tls_username = "alice";
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    std::vector<uint8_t> data(65536, 0xc3), back(65536);
    ASSERT_TRUE((*client)->PwriteSync(data.data(), data.size(), 1 << 20).ok());
    ASSERT_TRUE((*client)->PreadSync(back.data(), back.size(), 1 << 20).ok());
    EXPECT_EQ(back, data);
  }
}

TEST(TlsTest, ServerKilledWithRequestsInFlightCompletesEachOnce) {
  auto server = StartX509Nbdkit(Credentials().server_dir(),
                                {"--filter=delay", "memory", "8M", "rdelay=3000ms"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Client::Connect(X509Options((*server)->uri(), Credentials().client_dir()));
  ASSERT_TRUE(client.ok()) << client.status();
  constexpr int kReads = 8;
  std::vector<std::vector<uint8_t>> buffers(kReads, std::vector<uint8_t>(65536));
  std::vector<Operation> reads(kReads);
  CompletionTracker tracker;
  for (int i = 0; i < kReads; ++i) {
    reads[i].command = nbd::Command::kRead;
    reads[i].offset = uint64_t{65536} * i;
    reads[i].length = 65536;
    reads[i].buffer = buffers[i].data();
    tracker.Submit(**client, &reads[i]);
  }
  // Whether the requests reached the server yet or not, each must fail once.
  (*server)->Kill(SIGKILL);
  ASSERT_TRUE(tracker.WaitForAll(kWait));
  EXPECT_TRUE(tracker.ExactlyOnce());
  for (int i = 0; i < kReads; ++i) {
    EXPECT_EQ(tracker.status(&reads[i]).code(), absl::StatusCode::kUnavailable)
        << tracker.status(&reads[i]);
  }
  EXPECT_TRUE((*client)->Close().ok());
}

TEST(TlsTest, ReconnectRedoesTheTlsHandshake) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok());
  const std::string image = (*dir)->File("disk.raw");
  ASSERT_TRUE(nbd::testing::WriteDiskImage(image, 4 << 20, Pattern).ok());
  auto server = StartX509Nbdkit(Credentials().server_dir(), {"file", image});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options = X509Options((*server)->uri(), Credentials().client_dir());
  options.reconnect = true;
  options.reconnect_delay = absl::Seconds(15);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<uint8_t> back(65536);
  ASSERT_TRUE((*client)->PreadSync(back.data(), back.size(), 0).ok());

  (*server)->Kill(SIGKILL);
  ASSERT_TRUE((*server)->Wait().ok());
  ASSERT_TRUE((*server)->Restart().ok());
  // The first read after the loss may be the one that notices it; either way it is answered
  // once the connection is back, through a new TLS session.
  ASSERT_TRUE((*client)->PreadSync(back.data(), back.size(), 1 << 20).ok());
  for (uint64_t i = 0; i < back.size(); i += 997) ASSERT_EQ(back[i], Pattern((1 << 20) + i));
  EXPECT_EQ((*client)->stats().reconnects, 1u);
}

// A proxy between the client and a TLS server that, once armed, forwards only the first
// bytes of the next thing the server sends and then closes both sides: the client sees the
// stream end in the middle of a TLS record.
class CuttingProxy {
 public:
  explicit CuttingProxy(std::string upstream_path) : upstream_path_(std::move(upstream_path)) {
    dir_ = *TempDir::Create();
    path_ = dir_->File("proxy.sock");
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address = Address(path_);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    listen(listen_fd_, 1);
    thread_ = std::thread([this] { Run(); });
  }
  ~CuttingProxy() {
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    close(listen_fd_);
  }
  std::string uri() const { return absl::StrCat("nbds+unix:///?socket=", path_); }
  void ArmCut() { armed_ = true; }
  // Instead of cutting: flips one bit in the middle of the next thing the server sends and
  // forwards everything (a record that fails its integrity check).
  void ArmCorrupt() { corrupt_ = true; }
  bool cut() const { return cut_; }

 private:
  static sockaddr_un Address(const std::string& path) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof(address.sun_path), "%s", path.c_str());
    return address;
  }
  void Run() {
    pollfd accept_poll{listen_fd_, POLLIN, 0};
    while (!stop_ && poll(&accept_poll, 1, 100) == 0) {
    }
    if (stop_) return;
    int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    int server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address = Address(upstream_path_);
    if (client < 0 || connect(server, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      return;
    }
    std::vector<uint8_t> buffer(1 << 16);
    while (!stop_) {
      pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (poll(fds, 2, 100) <= 0) continue;
      if (fds[0].revents != 0) {
        ssize_t n = recv(client, buffer.data(), buffer.size(), 0);
        if (n <= 0) break;
        send(server, buffer.data(), static_cast<size_t>(n), MSG_NOSIGNAL);
      }
      if (fds[1].revents != 0) {
        ssize_t n = recv(server, buffer.data(), buffer.size(), 0);
        if (n <= 0) break;
        if (corrupt_.exchange(false)) {
          buffer[static_cast<size_t>(n) / 2] ^= 0x10;
          cut_ = true;
        }
        // A record header is 5 bytes, so 7 bytes end inside a record whatever comes next.
        const size_t forward = armed_ ? std::min<size_t>(7, static_cast<size_t>(n)) : n;
        send(client, buffer.data(), forward, MSG_NOSIGNAL);
        if (armed_) {
          cut_ = true;
          break;
        }
      }
    }
    close(client);
    close(server);
  }

  std::string upstream_path_;
  std::unique_ptr<TempDir> dir_;
  std::string path_;
  int listen_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> armed_{false};
  std::atomic<bool> corrupt_{false};
  std::atomic<bool> cut_{false};
};

// A TLS client to nbdkit through a CuttingProxy, with one read done to prove the session.
class TlsThroughProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = StartX509Nbdkit(Credentials().server_dir(), {"memory", "16M"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    proxy_ = std::make_unique<CuttingProxy>(server_->socket_path());
    ClientOptions options;
    options.uri = proxy_->uri();
    options.tls_certificates = Credentials().client_dir();
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    ASSERT_TRUE(client_->PreadSync(buffer_.data(), 4096, 0).ok());
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<CuttingProxy> proxy_;
  std::unique_ptr<Client> client_;
  std::vector<uint8_t> buffer_ = std::vector<uint8_t>(1 << 20);
};

TEST_F(TlsThroughProxyTest, ServerStreamEndingMidRecordFailsTheRequestsCleanly) {
  proxy_->ArmCut();
  CompletionTracker tracker;
  std::vector<Operation> reads(4);
  for (int i = 0; i < 4; ++i) {
    reads[i].command = nbd::Command::kRead;
    reads[i].offset = uint64_t{262144} * i;
    reads[i].length = 262144;
    reads[i].buffer = buffer_.data() + 262144 * i;
    tracker.Submit(*client_, &reads[i]);
  }
  ASSERT_TRUE(tracker.WaitForAll(kWait));
  EXPECT_TRUE(proxy_->cut());
  EXPECT_TRUE(tracker.ExactlyOnce());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(tracker.status(&reads[i]).code(), absl::StatusCode::kUnavailable)
        << tracker.status(&reads[i]);
  }
  EXPECT_TRUE(client_->Close().ok());
}

TEST_F(TlsThroughProxyTest, CorruptRecordFailsTheRequestsCleanly) {
  proxy_->ArmCorrupt();
  absl::Status status = client_->PreadSync(buffer_.data(), buffer_.size(), 0);
  EXPECT_TRUE(proxy_->cut());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("TLS session broken"));
  // The connection is gone for good (no reconnect): later requests fail at once, cleanly.
  EXPECT_EQ(client_->PreadSync(buffer_.data(), 4096, 0).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(client_->Close().ok());
}

// --- Scripted servers: what a real server would never do --------------------------------------

using nbd::Option;
using nbd::OptionReply;
namespace script = nbd::testing;

TEST(TlsTest, StalledTlsHandshakeIsBoundedByConnectTimeout) {
  script::ScriptedServer server({script::Greet(), script::ExpectClientFlags(),
                                 script::ExpectOption(Option::kStartTls),
                                 script::SendOptionReply(Option::kStartTls, OptionReply::kAck),
                                 script::Stall()});
  ClientOptions options;
  options.uri = Secure(server.uri());
  options.tls_certificates = Credentials().client_dir();
  options.connect_timeout = absl::Milliseconds(500);
  const absl::Time start = absl::Now();
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kDeadlineExceeded) << client.status();
  EXPECT_THAT(client.status().message(), HasSubstr("TLS handshake"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(TlsTest, PlainTextAfterTheStartTlsAcknowledgementIsNeverTrusted) {
  // A man in the middle answers STARTTLS and then injects what would complete a plain-text
  // negotiation. The bytes reach the TLS handshake, which rejects them.
  std::vector<uint8_t> injected =
      script::OptionReplyBytes(static_cast<uint32_t>(Option::kGo), 3 /* NBD_REP_INFO */,
                               std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0});
  script::ScriptedServer server({script::Greet(), script::ExpectClientFlags(),
                                 script::ExpectOption(Option::kStartTls),
                                 script::SendOptionReply(Option::kStartTls, OptionReply::kAck),
                                 script::SendRaw(injected), script::ExpectClose()});
  ClientOptions options;
  options.uri = Secure(server.uri());
  options.tls_certificates = Credentials().client_dir();
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnauthenticated) << client.status();
}

TEST(TlsTest, StartTlsRefusedFailsWhenRequired) {
  script::ScriptedServer server(
      {script::Greet(), script::ExpectClientFlags(), script::ExpectOption(Option::kStartTls),
       script::SendOptionReply(Option::kStartTls, OptionReply::kErrPolicy), script::ExpectClose()});
  ClientOptions options;
  options.uri = Secure(server.uri());
  options.tls_certificates = Credentials().client_dir();
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(client.status().message(), HasSubstr("TLS is required"));
  EXPECT_TRUE(server.Wait().ok());
}

TEST(TlsTest, OldstyleServerFailsWhenTlsIsRequired) {
  std::vector<uint8_t> oldstyle = {'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C',
                                   0x00, 0x00, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53,  // cliserv
                                   0, 0, 0, 0, 0, 0x10, 0, 0,                      // 1 MiB
                                   0, 0, 0, 1};                                    // HAS_FLAGS
  oldstyle.resize(oldstyle.size() + 124, 0);
  script::ScriptedServer server({script::SendRaw(oldstyle), script::ExpectClose()});
  ClientOptions options;
  options.uri = Secure(server.uri());
  options.tls_certificates = Credentials().client_dir();
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(client.status().message(), HasSubstr("oldstyle"));
  EXPECT_THAT(client.status().message(), HasSubstr("TLS is required"));
}

TEST(TlsTest, ServerWithoutFixedNewstyleFailsWhenTlsIsRequired) {
  script::ScriptedServer server({script::Greet(0), script::ExpectClose()});
  ClientOptions options;
  options.uri = Secure(server.uri());
  options.tls_certificates = Credentials().client_dir();
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_THAT(client.status().message(), HasSubstr("TLS is required"));
}

}  // namespace
}  // namespace nbdring
