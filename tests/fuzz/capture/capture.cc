// capture — records what real NBD servers say to nbdring, as seeds for the fuzzers:
//
//   bazel run //tests/fuzz/capture:capture -- $PWD/tests/fuzz/corpus
//
// For each scenario it starts a server (nbdkit memory, nbdkit behind the error filter, nbdkit
// with simple replies only, nbdkit speaking oldstyle, qemu-nbd on a sparse raw file), puts a
// recording proxy on a private Unix socket in front of it, and runs the fuzzer's client session
// (client_session.h) through the proxy. From the recorded streams it writes, under the corpus
// directory given:
//   client/capture-<scenario>        everything the server sent (client_fuzzer's input);
//   handshake/capture-<scenario>[-chunked]
//                                    the two config bytes of handshake_fuzzer.cc for the
//                                    session's options, then the handshake part;
//   reply_parser/capture-<scenario>[-chunked-direct]
//                                    reply_parser_fuzzer.cc's config bytes, meta context ids
//                                    and requests (parsed from what the client sent, cookies
//                                    renumbered 1..n), then the transmission part's replies
//                                    with the cookies renumbered the same way.
// Existing files of the same names are overwritten; seed-* files are not touched.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "nbd/export_info.h"
#include "nbd/wire.h"
#include "nbdring/client.h"
#include "tests/fuzz/capture/client_session.h"
#include "tests/testing/server_process.h"

namespace {

using ::nbd::testing::ServerProcess;
using ::nbd::testing::TempDir;
using Bytes = std::vector<uint8_t>;

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::Status SendAll(int fd, const uint8_t* data, size_t size) {
  while (size > 0) {
    const ssize_t sent = send(fd, data, size, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return ErrnoStatus("proxy send");
    data += sent;
    size -= static_cast<size_t>(sent);
  }
  return absl::OkStatus();
}

// Relays one client connection to `upstream` and records both directions.
class RecordingProxy {
 public:
  static absl::StatusOr<std::unique_ptr<RecordingProxy>> Start(std::string listen_path,
                                                               std::string upstream_path) {
    std::unique_ptr<RecordingProxy> proxy(new RecordingProxy());
    proxy->listen_path_ = std::move(listen_path);
    proxy->upstream_path_ = std::move(upstream_path);
    proxy->listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (proxy->listen_fd_ < 0) return ErrnoStatus("socket");
    const sockaddr_un address = Address(proxy->listen_path_);
    if (bind(proxy->listen_fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) !=
            0 ||
        listen(proxy->listen_fd_, 1) != 0) {
      return ErrnoStatus(absl::StrCat("bind/listen ", proxy->listen_path_));
    }
    RecordingProxy* self = proxy.get();
    proxy->thread_ = std::thread([self] { self->status_ = self->Relay(); });
    return proxy;
  }
  ~RecordingProxy() {
    if (thread_.joinable()) thread_.join();
    if (listen_fd_ >= 0) close(listen_fd_);
  }
  std::string uri() const { return "nbd+unix:///?socket=" + listen_path_; }
  // Waits until both sides have closed.
  absl::Status Finish() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }
  const Bytes& from_server() const { return from_server_; }
  const Bytes& from_client() const { return from_client_; }

 private:
  RecordingProxy() = default;

  static sockaddr_un Address(const std::string& path) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof(address.sun_path), "%s", path.c_str());
    return address;
  }

  absl::Status Relay() {
    pollfd waiting{listen_fd_, POLLIN, 0};
    if (poll(&waiting, 1, 10000) != 1) return absl::DeadlineExceededError("no client came");
    const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) return ErrnoStatus("accept");
    const int server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const sockaddr_un address = Address(upstream_path_);
    if (server < 0 ||
        connect(server, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      close(client);
      return ErrnoStatus(absl::StrCat("connect ", upstream_path_));
    }
    absl::Status status = Pump(client, server);
    close(client);
    close(server);
    return status;
  }

  absl::Status Pump(int client, int server) {
    bool client_open = true;
    bool server_open = true;
    uint8_t buffer[64 * 1024];
    while (client_open || server_open) {
      pollfd fds[2] = {{client_open ? client : -1, POLLIN, 0},
                       {server_open ? server : -1, POLLIN, 0}};
      if (poll(fds, 2, 10000) <= 0) return absl::DeadlineExceededError("the session stalled");
      for (int side = 0; side < 2; ++side) {
        if (fds[side].revents == 0) continue;
        const int from = side == 0 ? client : server;
        const int to = side == 0 ? server : client;
        const ssize_t received = recv(from, buffer, sizeof(buffer), 0);
        if (received < 0 && errno == EINTR) continue;
        if (received <= 0) {
          // End of that direction: pass it on.
          shutdown(to, SHUT_WR);
          (side == 0 ? client_open : server_open) = false;
          continue;
        }
        Bytes& record = side == 0 ? from_client_ : from_server_;
        record.insert(record.end(), buffer, buffer + received);
        // A peer that is gone already is no reason to stop recording the other direction.
        SendAll(to, buffer, static_cast<size_t>(received)).IgnoreError();
      }
    }
    return absl::OkStatus();
  }

  std::string listen_path_;
  std::string upstream_path_;
  int listen_fd_ = -1;
  std::thread thread_;
  absl::Status status_;
  Bytes from_server_;
  Bytes from_client_;
};

struct WireRequest {
  uint64_t cookie = 0;
  uint16_t flags = 0;
  uint16_t command = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// The compact requests (28-byte headers, write payloads) the client sent after the handshake,
// up to NBD_CMD_DISC.
absl::StatusOr<std::vector<WireRequest>> ParseRequests(absl::Span<const uint8_t> stream) {
  std::vector<WireRequest> requests;
  while (!stream.empty()) {
    if (stream.size() < nbd::kCompactRequestSize ||
        nbd::Load32(stream.data()) != nbd::kRequestMagic) {
      return absl::DataLossError(
          absl::StrCat("no request header where ", stream.size(), " client bytes remain"));
    }
    WireRequest request;
    request.flags = nbd::Load16(stream.data() + 4);
    request.command = nbd::Load16(stream.data() + 6);
    request.cookie = nbd::Load64(stream.data() + 8);
    request.offset = nbd::Load64(stream.data() + 16);
    request.length = nbd::Load32(stream.data() + 24);
    stream.remove_prefix(nbd::kCompactRequestSize);
    if (request.command == static_cast<uint16_t>(nbd::Command::kDisc)) break;
    if (request.command == static_cast<uint16_t>(nbd::Command::kWrite)) {
      if (stream.size() < request.length) return absl::DataLossError("write payload cut short");
      stream.remove_prefix(request.length);
    }
    requests.push_back(request);
  }
  return requests;
}

// One simple reply or structured reply chunk, whole; the cookie sits at offset 8 in both.
struct ReplyUnit {
  uint64_t cookie = 0;
  Bytes bytes;
};

absl::StatusOr<std::vector<ReplyUnit>> ParseReplies(absl::Span<const uint8_t> stream,
                                                    const std::vector<WireRequest>& requests) {
  std::map<uint64_t, const WireRequest*> by_cookie;
  for (const WireRequest& request : requests) by_cookie[request.cookie] = &request;
  std::vector<ReplyUnit> units;
  while (!stream.empty()) {
    if (stream.size() < nbd::kSimpleReplySize) return absl::DataLossError("reply cut short");
    const uint32_t magic = nbd::Load32(stream.data());
    const uint64_t cookie = nbd::Load64(stream.data() + 8);
    size_t size = 0;
    if (magic == nbd::kSimpleReplyMagic) {
      size = nbd::kSimpleReplySize;
      auto it = by_cookie.find(cookie);
      const bool read_data = it != by_cookie.end() &&
                             it->second->command == static_cast<uint16_t>(nbd::Command::kRead) &&
                             nbd::Load32(stream.data() + 4) == 0;
      if (read_data) size += it->second->length;
    } else if (magic == nbd::kStructuredReplyMagic) {
      if (stream.size() < nbd::kStructuredReplyHeaderSize)
        return absl::DataLossError("chunk cut short");
      size = nbd::kStructuredReplyHeaderSize + nbd::Load32(stream.data() + 16);
    } else {
      return absl::DataLossError(absl::StrCat("unknown reply magic 0x", absl::Hex(magic)));
    }
    if (stream.size() < size) return absl::DataLossError("reply payload cut short");
    units.push_back({cookie, Bytes(stream.begin(), stream.begin() + size)});
    stream.remove_prefix(size);
  }
  return units;
}

absl::Status WriteFile(const std::string& path, const Bytes& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  if (!file) return absl::InternalError(absl::StrCat("cannot write ", path));
  std::printf("  %s (%zu bytes)\n", path.c_str(), bytes.size());
  return absl::OkStatus();
}

Bytes Concatenate(std::initializer_list<absl::Span<const uint8_t>> parts) {
  Bytes bytes;
  for (absl::Span<const uint8_t> part : parts) bytes.insert(bytes.end(), part.begin(), part.end());
  return bytes;
}

// handshake_fuzzer.cc's config bytes for the session's handshake options: goal transmission,
// structured replies, one meta context (base:allocation), no TLS; request_block_size, default
// caps, the default export name, and a chunking seed (0: all at once).
Bytes HandshakeConfig(uint8_t chunk_seed) {
  return {static_cast<uint8_t>(0 | 1 << 2 | 1 << 4), static_cast<uint8_t>(1 | chunk_seed << 4)};
}

// reply_parser_fuzzer.cc's header for `requests` (cookies renumbered 1..n) on a connection
// negotiated as `info`.
absl::StatusOr<Bytes> ReplyParserHeader(const nbd::ExportInfo& info,
                                        const std::vector<WireRequest>& requests, bool direct,
                                        uint8_t chunk_seed) {
  if (requests.empty() || requests.size() > 8 || info.meta_contexts.size() > 3) {
    return absl::OutOfRangeError(absl::StrCat(requests.size(), " requests and ",
                                              info.meta_contexts.size(),
                                              " meta contexts do not fit the fuzzer's header"));
  }
  const uint8_t mode = info.reply_mode == nbd::ReplyMode::kSimple       ? 0
                       : info.reply_mode == nbd::ReplyMode::kStructured ? 1
                                                                        : 2;
  Bytes header = {static_cast<uint8_t>(mode | (direct ? 4 : 0) | info.meta_contexts.size() << 3 |
                                       (requests.size() - 1) << 5),
                  chunk_seed};
  for (const nbd::MetaContext& context : info.meta_contexts) {
    if (context.id > 0xff) return absl::OutOfRangeError("meta context id above 255");
    header.push_back(static_cast<uint8_t>(context.id));
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    const WireRequest& request = requests[i];
    if (request.offset > UINT32_MAX) return absl::OutOfRangeError("request offset above 4 GiB");
    uint8_t entry[11];
    entry[0] = static_cast<uint8_t>(request.command);
    entry[1] = static_cast<uint8_t>(request.flags);
    entry[2] = static_cast<uint8_t>(i + 1);
    nbd::Store32(entry + 3, static_cast<uint32_t>(request.offset));
    nbd::Store32(entry + 7, request.length);
    header.insert(header.end(), entry, entry + sizeof(entry));
  }
  return header;
}

absl::Status WriteSeeds(const std::string& corpus, const std::string& name,
                        const RecordingProxy& proxy) {
  const Bytes& from_server = proxy.from_server();
  const std::optional<nbdring::fuzzing::HandshakeSplit> split =
      nbdring::fuzzing::SplitHandshake(from_server);
  if (!split.has_value()) return absl::DataLossError("the recorded handshake does not complete");
  absl::Status status = WriteFile(absl::StrCat(corpus, "/client/capture-", name), from_server);
  const absl::Span<const uint8_t> handshake(from_server.data(), split->server_bytes);
  for (uint8_t seed : {0, 5}) {
    if (!status.ok()) return status;
    status = WriteFile(absl::StrCat(corpus, "/handshake/capture-", name, seed ? "-chunked" : ""),
                       Concatenate({HandshakeConfig(seed), handshake}));
  }
  if (!status.ok()) return status;

  const Bytes& from_client = proxy.from_client();
  if (from_client.size() < split->client_bytes) return absl::DataLossError("client stream short");
  auto requests = ParseRequests(absl::MakeConstSpan(from_client).subspan(split->client_bytes));
  if (!requests.ok()) return requests.status();
  const absl::Span<const uint8_t> transmission =
      absl::MakeConstSpan(from_server).subspan(split->server_bytes);
  auto replies = ParseReplies(transmission, *requests);
  if (!replies.ok()) return replies.status();
  std::map<uint64_t, uint64_t> renumbered;
  for (size_t i = 0; i < requests->size(); ++i) renumbered[(*requests)[i].cookie] = i + 1;
  Bytes renumbered_replies;
  for (ReplyUnit& unit : *replies) {
    nbd::Store64(unit.bytes.data() + 8,
                 renumbered.count(unit.cookie) ? renumbered[unit.cookie] : 0);
    renumbered_replies.insert(renumbered_replies.end(), unit.bytes.begin(), unit.bytes.end());
  }
  for (bool chunked : {false, true}) {
    auto header = ReplyParserHeader(split->info, *requests, /*direct=*/chunked, chunked ? 0x2b : 0);
    if (!header.ok()) return header.status();
    status = WriteFile(
        absl::StrCat(corpus, "/reply_parser/capture-", name, chunked ? "-chunked-direct" : ""),
        Concatenate({*header, renumbered_replies}));
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status Capture(const std::string& corpus, const std::string& name,
                     const ServerProcess& server) {
  std::printf("%s:\n", name.c_str());
  auto dir = TempDir::Create();
  if (!dir.ok()) return dir.status();
  auto proxy = RecordingProxy::Start((*dir)->File("proxy.sock"), server.socket_path());
  if (!proxy.ok()) return proxy.status();
  nbdring::fuzzing::SessionRequests requests;
  {
    auto client = nbdring::Client::Connect(nbdring::fuzzing::SessionOptions((*proxy)->uri()));
    if (!client.ok()) return client.status();
    absl::Status run = requests.Run(
        **client, [] {}, absl::Seconds(10));
    if (!run.ok()) return run;
  }
  absl::Status finished = (*proxy)->Finish();
  if (!finished.ok()) return finished;
  absl::Status checked = requests.Check();
  if (!checked.ok()) return checked;
  std::printf("%s", requests.Summary().c_str());
  return WriteSeeds(corpus, name, **proxy);
}

absl::Status CaptureAll(const std::string& corpus) {
  struct NbdkitScenario {
    const char* name;
    std::vector<std::string> args;
  };
  const NbdkitScenario nbdkit_scenarios[] = {
      {"nbdkit-memory", {"memory", "1M"}},
      {"nbdkit-error-filter", {"--filter=error", "memory", "1M", "error-rate=50%", "error=EIO"}},
      {"nbdkit-simple-replies", {"--no-sr", "memory", "1M"}},
      {"nbdkit-oldstyle", {"--oldstyle", "memory", "1M"}},
  };
  for (const NbdkitScenario& scenario : nbdkit_scenarios) {
    auto server = ServerProcess::StartNbdkit(scenario.args);
    if (!server.ok()) return server.status();
    absl::Status status = Capture(corpus, scenario.name, **server);
    if (!status.ok())
      return absl::Status(status.code(), absl::StrCat(scenario.name, ": ", status.message()));
  }

  // qemu-nbd on a sparse raw file with data only at 16 KiB: reads see holes and data, block
  // status both kinds of extents.
  auto dir = TempDir::Create();
  if (!dir.ok()) return dir.status();
  const std::string image = (*dir)->File("disk.raw");
  { std::ofstream create(image, std::ios::binary); }
  if (truncate(image.c_str(), 1 << 20) != 0) return ErrnoStatus(absl::StrCat("truncate ", image));
  {
    std::fstream file(image, std::ios::binary | std::ios::in | std::ios::out);
    file.seekp(16 * 1024);
    const std::string data(4096, 'q');
    file.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!file) return absl::InternalError(absl::StrCat("cannot write data into ", image));
  }
  auto qemu = ServerProcess::StartQemuNbd(image, "raw");
  if (!qemu.ok()) return qemu.status();
  absl::Status status = Capture(corpus, "qemu-nbd-raw", **qemu);
  if (!status.ok())
    return absl::Status(status.code(), absl::StrCat("qemu-nbd-raw: ", status.message()));
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus directory, e.g. $PWD/tests/fuzz/corpus>\n", argv[0]);
    return 2;
  }
  const absl::Status status = CaptureAll(argv[1]);
  if (!status.ok()) {
    std::fprintf(stderr, "capture: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
