// The C API against real nbdkit: each call, each bad argument (a clear error, never a crash),
// cancel, and the calls a completion callback must not make.
#include "nbdring.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/testing/event.h"
#include "tests/testing/server_process.h"
#include "tests/testing/tls_credentials.h"

namespace {

using ::nbd::testing::ServerProcess;
using ::nbdring::testing::Event;

constexpr uint64_t kSize = 16 << 20;

std::unique_ptr<ServerProcess> StartServer(const std::vector<std::string>& args) {
  auto server = ServerProcess::StartNbdkit(args);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::string LastError() { return nbdring_get_error(); }

TEST(CApiTest, OptionsTakeKnownKeysAndRefuseTheRest) {
  nbdring_options* options = nbdring_options_create();
  ASSERT_NE(options, nullptr);
  EXPECT_EQ(nbdring_options_set(options, "connections", "4"), 0);
  EXPECT_EQ(nbdring_options_set(options, "threads", "2"), 0);
  EXPECT_EQ(nbdring_options_set(options, "inflight_limit", "16"), 0);
  EXPECT_EQ(nbdring_options_set(options, "request_timeout_ms", "5000"), 0);
  EXPECT_EQ(nbdring_options_set(options, "reconnect", "true"), 0);
  EXPECT_EQ(nbdring_options_set(options, "reconnect_attempts", "3"), 0);
  EXPECT_EQ(nbdring_options_set(options, "reconnect_attempts", "-1"), -1);
  EXPECT_EQ(nbdring_options_set(options, "meta_context", "base:allocation"), 0);
  EXPECT_EQ(nbdring_options_set(options, "completion_batch_delay_us", "0"), 0);
  EXPECT_EQ(nbdring_options_set(options, "tls", "allow"), 0);
  EXPECT_EQ(nbdring_options_set(options, "tls_certificates", "/nonexistent"), 0);
  EXPECT_EQ(nbdring_options_set(options, "tls_verify_peer", "true"), 0);
  EXPECT_EQ(nbdring_options_set(options, "tls", "sometimes"), -1);
  EXPECT_EQ(nbdring_get_errno(), EINVAL);
  EXPECT_EQ(nbdring_options_set(options, "tls_username", ""), -1);

  EXPECT_EQ(nbdring_options_set(options, "connectionz", "4"), -1);
  EXPECT_EQ(nbdring_get_errno(), EINVAL);
  EXPECT_NE(LastError().find("unknown option 'connectionz'"), std::string::npos) << LastError();
  // 0 and "auto" mean an adaptive limit; anything else out of 1-65536 is refused by value.
  EXPECT_EQ(nbdring_options_set(options, "inflight_limit", "0"), 0);
  EXPECT_EQ(nbdring_options_set(options, "inflight_limit", "auto"), 0);
  for (const char* bad : {"autox", "-1", "70000", "", "16k"}) {
    EXPECT_EQ(nbdring_options_set(options, "inflight_limit", bad), -1) << bad;
    EXPECT_EQ(nbdring_get_errno(), EINVAL);
    EXPECT_NE(LastError().find(std::string("inflight_limit' needs a number from 1 to 65536, "
                                           "or auto (or 0), got '") + bad + "'"),
              std::string::npos)
        << LastError();
  }
  EXPECT_EQ(nbdring_options_set(options, "reconnect", "maybe"), -1);
  EXPECT_EQ(nbdring_options_set(options, "threads", "two"), -1);
  EXPECT_EQ(nbdring_options_set(options, "threads", "-1"), -1);
  EXPECT_EQ(nbdring_options_set(options, "threads", "0"), 0);  // caller-driven
  EXPECT_EQ(nbdring_options_set(options, nullptr, "1"), -1);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);
  EXPECT_EQ(nbdring_options_set(nullptr, "threads", "1"), -1);
  nbdring_options_destroy(options);
  nbdring_options_destroy(nullptr);
}

TEST(CApiTest, ConnectFailuresNameTheCause) {
  EXPECT_EQ(nbdring_connect(nullptr, nullptr), nullptr);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);
  EXPECT_EQ(nbdring_connect("http://example.com/", nullptr), nullptr);
  EXPECT_NE(LastError().find("nbdring_connect"), std::string::npos);
  EXPECT_EQ(nbdring_connect("nbd+unix:///?socket=/nonexistent/nbd.sock", nullptr), nullptr);
  EXPECT_NE(LastError().find("/nonexistent/nbd.sock"), std::string::npos) << LastError();
}

TEST(CApiTest, TlsSettingsByName) {
  auto credentials = nbd::testing::TlsCredentials::Create();
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  auto server = StartServer({"--tls=require",
                             "--tls-certificates=" + (*credentials)->server_dir(), "memory", "1M"});
  ASSERT_NE(server, nullptr);
  nbdring_options* options = nbdring_options_create();
  ASSERT_EQ(nbdring_options_set(options, "tls", "require"), 0);
  ASSERT_EQ(nbdring_options_set(options, "tls_certificates", (*credentials)->client_dir().c_str()),
            0);
  ASSERT_EQ(nbdring_options_set(options, "tls_hostname", "localhost"), 0);
  nbdring_client* client = nbdring_connect(server->uri().c_str(), options);
  ASSERT_NE(client, nullptr) << LastError();
  char buffer[512];
  EXPECT_EQ(nbdring_pread(client, buffer, sizeof(buffer), 0, 0), 0) << LastError();
  EXPECT_EQ(nbdring_close(client), 0);

  // A CA that did not sign the server's certificate: EACCES, and the reason.
  ASSERT_EQ(nbdring_options_set(options, "tls_certificates",
                                (*credentials)->other_ca_dir().c_str()),
            0);
  EXPECT_EQ(nbdring_connect(server->uri().c_str(), options), nullptr);
  EXPECT_EQ(nbdring_get_errno(), EACCES);
  EXPECT_NE(LastError().find("certificate"), std::string::npos) << LastError();
  nbdring_options_destroy(options);
}

struct LogLines {
  std::mutex mutex;
  std::vector<std::pair<int, std::string>> lines;
};

void CollectLog(void* user_data, int level, const char* message) {
  auto* log = static_cast<LogLines*>(user_data);
  std::lock_guard<std::mutex> lock(log->mutex);
  log->lines.emplace_back(level, message);
}

TEST(CApiTest, LogCallbackGetsLevelsAndMessages) {
  auto server = StartServer({"memory", "1M"});
  ASSERT_NE(server, nullptr);
  nbdring_options* options = nbdring_options_create();
  EXPECT_EQ(nbdring_options_set_log(options, CollectLog, nullptr, 7), -1);
  EXPECT_EQ(nbdring_get_errno(), EINVAL);
  LogLines log;
  ASSERT_EQ(nbdring_options_set_log(options, CollectLog, &log, NBDRING_LOG_DEBUG), 0);
  nbdring_client* client = nbdring_connect(server->uri().c_str(), options);
  nbdring_options_destroy(options);
  ASSERT_NE(client, nullptr) << LastError();
  char buffer[512];
  EXPECT_EQ(nbdring_pread(client, buffer, sizeof(buffer), 512, 0), 0) << LastError();
  EXPECT_EQ(nbdring_close(client), 0);
  std::lock_guard<std::mutex> lock(log.mutex);
  int requests = 0, negotiated = 0;
  for (const auto& [level, line] : log.lines) {
    if (level == NBDRING_LOG_DEBUG && line.find("request NBD_CMD_READ") != std::string::npos) {
      ++requests;
    }
    if (level == NBDRING_LOG_INFO && line.find("negotiated export") != std::string::npos) {
      ++negotiated;
    }
  }
  EXPECT_EQ(requests, 1);
  EXPECT_EQ(negotiated, 1);
}

struct Extents {
  std::vector<std::tuple<std::string, uint64_t, uint64_t, uint64_t>> list;
};

void CollectExtent(void* user_data, const char* context, uint64_t offset, uint64_t length,
                   uint64_t flags) {
  static_cast<Extents*>(user_data)->list.emplace_back(context, offset, length, flags);
}

// The URI's inflight_limit= replaces the option; the stats say what the connections use.
TEST(CApiTest, InflightLimitFromTheUriShowsInStats) {
  auto server = StartServer({"memory", "1M"});
  ASSERT_NE(server, nullptr);
  nbdring_options* options = nbdring_options_create();
  ASSERT_EQ(nbdring_options_set(options, "inflight_limit", "16"), 0);
  auto limit_with = [&](const std::string& uri) -> uint64_t {
    nbdring_client* client = nbdring_connect(uri.c_str(), options);
    EXPECT_NE(client, nullptr) << uri << ": " << LastError();
    if (client == nullptr) return 0;
    std::vector<char> data(4096);
    EXPECT_EQ(nbdring_pread(client, data.data(), data.size(), 0, 0), 0) << LastError();
    nbdring_stats stats;
    EXPECT_EQ(nbdring_get_stats(client, &stats), 0) << LastError();
    EXPECT_EQ(nbdring_close(client), 0);
    return stats.inflight_limit;
  };
  EXPECT_EQ(limit_with(server->uri()), 16u);
  EXPECT_EQ(limit_with(server->uri() + "&inflight_limit=5"), 5u);
  const uint64_t automatic = limit_with(server->uri() + "&inflight_limit=auto");
  EXPECT_GE(automatic, 1u);
  EXPECT_LE(automatic, 256u);
  ASSERT_EQ(nbdring_options_set(options, "inflight_limit", "auto"), 0);
  EXPECT_EQ(limit_with(server->uri() + "&inflight_limit=7"), 7u);

  const std::string bad = server->uri() + "&inflight_limit=lots";
  EXPECT_EQ(nbdring_connect(bad.c_str(), options), nullptr);
  EXPECT_EQ(nbdring_get_errno(), EINVAL);
  EXPECT_NE(LastError().find("inflight_limit=\"lots\" must be auto or a number from 1 to 65536"),
            std::string::npos)
      << LastError();
  nbdring_options_destroy(options);
}

TEST(CApiTest, BlockStatusStatsAndMetrics) {
  auto server = StartServer({"memory", "1M"});
  ASSERT_NE(server, nullptr);
  nbdring_client* plain = nbdring_connect(server->uri().c_str(), nullptr);
  ASSERT_NE(plain, nullptr) << LastError();
  Extents none;
  EXPECT_EQ(nbdring_block_status(plain, 65536, 0, CollectExtent, &none, 0), -1);
  EXPECT_EQ(nbdring_get_errno(), ENOTSUP);
  EXPECT_NE(LastError().find("meta_context"), std::string::npos) << LastError();
  EXPECT_EQ(nbdring_close(plain), 0);

  nbdring_options* options = nbdring_options_create();
  ASSERT_EQ(nbdring_options_set(options, "meta_context", "base:allocation"), 0);
  nbdring_client* client = nbdring_connect(server->uri().c_str(), options);
  nbdring_options_destroy(options);
  ASSERT_NE(client, nullptr) << LastError();
  std::vector<char> data(65536, 'x');
  ASSERT_EQ(nbdring_pwrite(client, data.data(), data.size(), 0, 0), 0) << LastError();
  ASSERT_EQ(nbdring_pread(client, data.data(), data.size(), 0, 0), 0) << LastError();
  EXPECT_EQ(nbdring_block_status(client, 1 << 20, 0, nullptr, nullptr, 0), -1);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);
  Extents extents;
  ASSERT_EQ(nbdring_block_status(client, 1 << 20, 0, CollectExtent, &extents, 0), 0)
      << LastError();
  ASSERT_GE(extents.list.size(), 2u);
  // The written 64 KiB are data; the rest of the export was never written: hole and zero.
  EXPECT_EQ(std::get<0>(extents.list.front()), "base:allocation");
  EXPECT_EQ(std::get<1>(extents.list.front()), 0u);
  EXPECT_EQ(std::get<3>(extents.list.front()), 0u);
  EXPECT_EQ(std::get<3>(extents.list.back()), NBDRING_STATE_HOLE | NBDRING_STATE_ZERO);
  uint64_t next = 0;
  for (const auto& [context, offset, length, flags] : extents.list) {
    EXPECT_EQ(offset, next);  // contiguous, in order
    next = offset + length;
  }

  nbdring_stats stats;
  EXPECT_EQ(nbdring_get_stats(client, nullptr), -1);
  ASSERT_EQ(nbdring_get_stats(client, &stats), 0) << LastError();
  EXPECT_GE(stats.requests, 3u);
  EXPECT_EQ(stats.bytes_written, 65536u);
  EXPECT_EQ(stats.bytes_read, 65536u);
  EXPECT_GT(stats.read_p50_ns, 0u);
  EXPECT_GE(stats.read_p99_ns, stats.read_p50_ns);
  EXPECT_GT(stats.write_p50_ns, 0u);
  EXPECT_EQ(stats.inflight_limit, 64u);  // the default, one connection
  char* text = nbdring_metrics_text(client, "volume=\"v1\"");
  ASSERT_NE(text, nullptr) << LastError();
  const std::string metrics(text);
  std::free(text);
  EXPECT_NE(metrics.find("nbdring_bytes_written_total{volume=\"v1\"} 65536"), std::string::npos)
      << metrics;
  EXPECT_EQ(metrics.substr(metrics.size() - 6), "# EOF\n");
  EXPECT_EQ(nbdring_close(client), 0);
}

TEST(CApiTest, SynchronousCallsAndExportFlags) {
  auto server = StartServer({"memory", "16M"});
  ASSERT_NE(server, nullptr);
  nbdring_client* client = nbdring_connect(server->uri().c_str(), nullptr);
  ASSERT_NE(client, nullptr) << LastError();
  EXPECT_EQ(nbdring_get_size(client), static_cast<int64_t>(kSize));
  EXPECT_EQ(nbdring_is_read_only(client), 0);
  EXPECT_EQ(nbdring_can_flush(client), 1);
  EXPECT_EQ(nbdring_can_trim(client), 1);
  EXPECT_EQ(nbdring_can_zero(client), 1);
  EXPECT_EQ(nbdring_can_multi_conn(client), 1);

  std::vector<uint8_t> data(65536), back(65536);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + 7);
  ASSERT_EQ(nbdring_pwrite(client, data.data(), data.size(), 4096, NBDRING_CMD_FLAG_FUA), 0)
      << LastError();
  ASSERT_EQ(nbdring_pread(client, back.data(), back.size(), 4096, 0), 0) << LastError();
  EXPECT_EQ(back, data);
  EXPECT_EQ(nbdring_flush(client, 0), 0) << LastError();
  EXPECT_EQ(nbdring_cache(client, 4096, 0, 0), 0) << LastError();
  ASSERT_EQ(nbdring_zero(client, 8192, 4096, 0), 0) << LastError();
  ASSERT_EQ(nbdring_trim(client, 4096, 65536, 0), 0) << LastError();
  ASSERT_EQ(nbdring_pread(client, back.data(), 8192, 4096, 0), 0) << LastError();
  EXPECT_EQ(back[0], 0);
  EXPECT_EQ(back[8191], 0);

  // Bad arguments: -1 and a message naming the problem; the client stays usable.
  EXPECT_EQ(nbdring_pread(client, nullptr, 4096, 0, 0), -1);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);
  EXPECT_EQ(nbdring_pread(client, back.data(), 4096, kSize - 1024, 0), -1);
  EXPECT_NE(nbdring_get_errno(), 0);
  EXPECT_NE(LastError().find("nbdring_pread"), std::string::npos) << LastError();
  EXPECT_EQ(nbdring_pread(client, back.data(), 0, 0, 0), -1);  // zero length
  EXPECT_EQ(nbdring_pwrite(client, data.data(), 4096, 0, 0x10000), -1);
  EXPECT_EQ(nbdring_flush(client, NBDRING_CMD_FLAG_FUA), -1);
  EXPECT_EQ(nbdring_aio_pread(client, back.data(), 4096, kSize, nullptr, nullptr, 0), -1);
  EXPECT_EQ(nbdring_aio_in_flight(client), 0);
  EXPECT_EQ(nbdring_pread(nullptr, back.data(), 4096, 0, 0), -1);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);
  ASSERT_EQ(nbdring_pread(client, back.data(), 4096, 0, 0), 0) << LastError();
  EXPECT_EQ(nbdring_close(client), 0);
  EXPECT_EQ(nbdring_close(nullptr), 0);
}

TEST(CApiTest, ReadOnlyExportRefusesWrites) {
  auto server = StartServer({"-r", "memory", "16M"});
  ASSERT_NE(server, nullptr);
  nbdring_client* client = nbdring_connect(server->uri().c_str(), nullptr);
  ASSERT_NE(client, nullptr) << LastError();
  EXPECT_EQ(nbdring_is_read_only(client), 1);
  std::vector<uint8_t> data(4096, 1);
  EXPECT_EQ(nbdring_pwrite(client, data.data(), data.size(), 0, 0), -1);
  EXPECT_NE(LastError().find("read-only"), std::string::npos) << LastError();
  EXPECT_EQ(nbdring_close(client), 0);
}

struct Completion {
  Event done;
  int error = -1;
};

void RecordCompletion(void* user_data, int error) {
  auto* completion = static_cast<Completion*>(user_data);
  completion->error = error;
  completion->done.Notify();
}

TEST(CApiTest, CancelCompletesWithEcanceledAndStaleCookiesAreRefused) {
  // Reads wait 3 s in the server: the cancel comes first.
  auto server = StartServer({"--filter=delay", "memory", "16M", "rdelay=3000ms"});
  ASSERT_NE(server, nullptr);
  nbdring_client* client = nbdring_connect(server->uri().c_str(), nullptr);
  ASSERT_NE(client, nullptr) << LastError();
  std::vector<uint8_t> buffer(4096);
  Completion completion;
  const int64_t cookie =
      nbdring_aio_pread(client, buffer.data(), buffer.size(), 0, &RecordCompletion, &completion, 0);
  ASSERT_GT(cookie, 0) << LastError();
  EXPECT_EQ(nbdring_aio_in_flight(client), 1);
  ASSERT_EQ(nbdring_aio_cancel(client, cookie), 0) << LastError();
  ASSERT_TRUE(completion.done.WaitFor(absl::Seconds(2)));  // before the server's 3 s
  EXPECT_EQ(completion.error, ECANCELED);
  EXPECT_EQ(nbdring_aio_cancel(client, cookie), -1);
  EXPECT_EQ(nbdring_get_errno(), ENOENT);
  EXPECT_EQ(nbdring_close(client), 0);
}

void CountCompletion(void* user_data, int error) {
  auto* counts = static_cast<std::pair<int, int>*>(user_data);
  ++counts->first;
  if (error != 0) ++counts->second;
}

// Caller-driven from C: option threads=0, the caller's own poll(2) on nbdring_get_fd and
// nbdring_poll(client, 0); synchronous calls drive the ring themselves.
TEST(CApiTest, CallerDrivenClientWithPollAndFd) {
  auto server = StartServer({"memory", "16M"});
  ASSERT_NE(server, nullptr);
  nbdring_options* options = nbdring_options_create();
  ASSERT_EQ(nbdring_options_set(options, "threads", "0"), 0);
  nbdring_client* client = nbdring_connect(server->uri().c_str(), options);
  nbdring_options_destroy(options);
  ASSERT_NE(client, nullptr) << LastError();
  std::vector<uint8_t> data(16 * 4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13 + 1);
  ASSERT_EQ(nbdring_pwrite(client, data.data(), data.size(), 0, 0), 0) << LastError();
  const int fd = nbdring_get_fd(client);
  ASSERT_GE(fd, 0) << LastError();
  std::vector<uint8_t> back(data.size());
  std::pair<int, int> counts{0, 0};
  for (int i = 0; i < 16; ++i) {
    ASSERT_GT(nbdring_aio_pread(client, back.data() + i * 4096, 4096, i * 4096,
                                &CountCompletion, &counts, 0),
              0)
        << LastError();
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  int reported = 0;  // nbdring_poll returns how many completions it ran
  while (counts.first < 16 && absl::Now() < deadline) {
    pollfd watch{fd, POLLIN, 0};
    if (poll(&watch, 1, 1000) == 1) {
      const int ran = nbdring_poll(client, 0);
      ASSERT_GE(ran, 0) << LastError();
      reported += ran;
      EXPECT_EQ(reported, counts.first);
    }
  }
  EXPECT_EQ(counts.first, 16);
  EXPECT_EQ(reported, 16);
  EXPECT_EQ(counts.second, 0);
  EXPECT_EQ(back, data);
  EXPECT_EQ(nbdring_aio_in_flight(client), 0);

  // A threaded client has no fd; nbdring_poll on it fails with a message naming it.
  nbdring_client* threaded = nbdring_connect(server->uri().c_str(), nullptr);
  ASSERT_NE(threaded, nullptr) << LastError();
  EXPECT_EQ(nbdring_get_fd(threaded), -1);
  EXPECT_EQ(nbdring_get_errno(), EINVAL);
  EXPECT_EQ(nbdring_poll(threaded, 0), -1);
  EXPECT_NE(LastError().find("nbdring_poll"), std::string::npos) << LastError();
  EXPECT_EQ(nbdring_close(threaded), 0);
  EXPECT_EQ(nbdring_close(client), 0);
}

// libnbd's nbd_connect_command and nbd_connect_socket, from C.
TEST(CApiTest, ConnectCommandAndConnectSocket) {
  nbdring_options* options = nbdring_options_create();
  ASSERT_EQ(nbdring_options_set(options, "export_name", "ignored-by-memory"), 0);
  char* argv[] = {const_cast<char*>("nbdkit"), const_cast<char*>("-s"),
                  const_cast<char*>("memory"), const_cast<char*>("16M"), nullptr};
  nbdring_client* client = nbdring_connect_command(argv, options);
  ASSERT_NE(client, nullptr) << LastError();
  EXPECT_EQ(nbdring_get_size(client), static_cast<int64_t>(kSize));
  std::vector<uint8_t> data(4096, 0x5a), back(4096);
  ASSERT_EQ(nbdring_pwrite(client, data.data(), data.size(), 0, 0), 0) << LastError();
  ASSERT_EQ(nbdring_pread(client, back.data(), back.size(), 0, 0), 0) << LastError();
  EXPECT_EQ(back, data);
  EXPECT_EQ(nbdring_close(client), 0);

  char* missing[] = {const_cast<char*>("no-such-nbd-server-xyz"), nullptr};
  EXPECT_EQ(nbdring_connect_command(missing, options), nullptr);
  EXPECT_EQ(nbdring_get_errno(), ENOENT);
  EXPECT_NE(LastError().find("no-such-nbd-server-xyz"), std::string::npos) << LastError();
  EXPECT_EQ(nbdring_connect_command(nullptr, options), nullptr);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);

  auto server = StartServer({"memory", "16M"});
  ASSERT_NE(server, nullptr);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, server->socket_path().c_str(), sizeof(address.sun_path) - 1);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  client = nbdring_connect_socket(fd, options);
  ASSERT_NE(client, nullptr) << LastError();
  ASSERT_EQ(nbdring_pread(client, back.data(), back.size(), 0, 0), 0) << LastError();
  EXPECT_EQ(nbdring_close(client), 0);
  EXPECT_EQ(nbdring_connect_socket(-1, options), nullptr);
  EXPECT_EQ(nbdring_get_errno(), EINVAL);
  nbdring_options_destroy(options);
}

struct CallbackCalls {
  nbdring_client* client = nullptr;
  std::vector<uint8_t> buffer = std::vector<uint8_t>(4096);
  int pread_result = 0;
  int pread_errno = 0;
  int close_result = 0;
  int close_errno = 0;
  Event done;
};

void CallBlockingCallsFromCompletion(void* user_data, int /*error*/) {
  auto* calls = static_cast<CallbackCalls*>(user_data);
  calls->pread_result = nbdring_pread(calls->client, calls->buffer.data(), 4096, 0, 0);
  calls->pread_errno = nbdring_get_errno();
  calls->close_result = nbdring_close(calls->client);
  calls->close_errno = nbdring_get_errno();
  calls->done.Notify();
}

TEST(CApiTest, BlockingCallsFromACompletionAreRefused) {
  auto server = StartServer({"memory", "16M"});
  ASSERT_NE(server, nullptr);
  CallbackCalls calls;
  calls.client = nbdring_connect(server->uri().c_str(), nullptr);
  ASSERT_NE(calls.client, nullptr) << LastError();
  ASSERT_GT(nbdring_aio_flush(calls.client, &CallBlockingCallsFromCompletion, &calls, 0), 0);
  ASSERT_TRUE(calls.done.WaitFor(absl::Seconds(10)));
  EXPECT_EQ(calls.pread_result, -1);
  EXPECT_EQ(calls.pread_errno, EDEADLK);
  EXPECT_EQ(calls.close_result, -1);
  EXPECT_EQ(calls.close_errno, EDEADLK);
  EXPECT_EQ(nbdring_close(calls.client), 0);  // from outside: fine
}

}  // namespace

// Completions from several ring threads: counted atomically, the last one signals.
struct SharedCounts {
  std::atomic<int> completed{0};
  std::atomic<int> failed{0};
  int expected = 0;
  Event all_done;
};

void CountSharedCompletion(void* user_data, int error) {
  auto* counts = static_cast<SharedCounts*>(user_data);
  if (error != 0) counts->failed.fetch_add(1);
  if (counts->completed.fetch_add(1) + 1 == counts->expected) counts->all_done.Notify();
}

// Clients sharing one runtime, from C: threaded (2 ring threads) and caller-driven
// (nbdring_runtime_poll turns every client). The runtime's handle may go before its clients.
TEST(CApiTest, ClientsShareARuntime) {
  auto server = StartServer({"memory", "16M"});
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(nbdring_options_set_runtime(nullptr, nullptr), -1);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);
  EXPECT_EQ(nbdring_runtime_poll(nullptr, 0), -1);
  EXPECT_EQ(nbdring_get_errno(), EFAULT);

  for (const char* threads : {"2", "0"}) {
    const bool polled = std::string(threads) == "0";
    nbdring_options* options = nbdring_options_create();
    ASSERT_EQ(nbdring_options_set(options, "threads", threads), 0);
    nbdring_runtime* runtime = nbdring_runtime_create(options);
    ASSERT_NE(runtime, nullptr) << LastError();
    if (polled) {
      EXPECT_GE(nbdring_runtime_get_fd(runtime), 0) << LastError();
    } else {
      EXPECT_EQ(nbdring_runtime_get_fd(runtime), -1);
      EXPECT_EQ(nbdring_runtime_poll(runtime, 0), -1);
    }
    ASSERT_EQ(nbdring_options_set_runtime(options, runtime), 0);
    std::vector<nbdring_client*> clients;
    for (int c = 0; c < 4; ++c) {
      clients.push_back(nbdring_connect(server->uri().c_str(), options));
      ASSERT_NE(clients.back(), nullptr) << LastError();
    }
    nbdring_options_destroy(options);  // the clients hold the runtime, not the options
    std::vector<uint8_t> data(4 * 4096);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
    for (int c = 0; c < 4; ++c) {
      ASSERT_EQ(nbdring_pwrite(clients[c], data.data() + c * 4096, 4096, c * 4096, 0), 0)
          << LastError();
    }
    nbdring_runtime_destroy(runtime);  // the clients keep the rings running
    std::vector<uint8_t> back(data.size());
    SharedCounts counts;
    counts.expected = 4;
    for (int c = 0; c < 4; ++c) {
      ASSERT_GT(nbdring_aio_pread(clients[c], back.data() + c * 4096, 4096, c * 4096,
                                  &CountSharedCompletion, &counts, 0),
                0)
          << LastError();
    }
    if (polled) {
      // Any client's poll turns the one shared ring.
      const absl::Time deadline = absl::Now() + absl::Seconds(20);
      int reported = 0;
      while (!counts.all_done.notified() && absl::Now() < deadline) {
        const int ran = nbdring_poll(clients[1], 100);
        ASSERT_GE(ran, 0) << LastError();
        reported += ran;
      }
      EXPECT_EQ(reported, 4);  // every client's completions, from one client's poll
    }
    ASSERT_TRUE(counts.all_done.WaitFor(absl::Seconds(20))) << threads;
    EXPECT_EQ(counts.failed.load(), 0) << threads;
    EXPECT_EQ(back, data) << threads;
    for (nbdring_client* client : clients) EXPECT_EQ(nbdring_close(client), 0) << LastError();
  }
}
