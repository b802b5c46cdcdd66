// nbd::Handshake against a real nbdkit (memory plugin, 1 MiB) over a Unix socket, driven with
// plain blocking POSIX I/O so that only the protocol layer is under test. After the handshake
// the test speaks the transmission phase by hand (nbd::EncodeRequest for requests, replies
// decoded with Load32/Load64) to prove the negotiated state is really what the server uses.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/handshake.h"
#include "nbd/request.h"
#include "nbd/wire.h"
#include "tests/testing/server_process.h"

namespace nbd {
namespace {

using ::nbd::testing::ServerProcess;
using Goal = HandshakeOptions::Goal;

constexpr uint64_t kExportSize = 1 << 20;
constexpr size_t kIoSize = 64 * 1024;
constexpr uint64_t kIoOffset = 128 * 1024;

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// A connected Unix socket, closed on destruction.
class Connection {
 public:
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const std::string& path) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return ErrnoStatus("socket");
    auto connection = std::unique_ptr<Connection>(new Connection(fd));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof(address.sun_path), "%s", path.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      return ErrnoStatus(absl::StrCat("connect ", path));
    }
    return connection;
  }
  ~Connection() { close(fd_); }

  absl::Status WriteAll(absl::Span<const uint8_t> bytes) {
    while (!bytes.empty()) {
      const ssize_t sent = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (sent < 0 && errno == EINTR) continue;
      if (sent < 0) return ErrnoStatus("send");
      bytes.remove_prefix(static_cast<size_t>(sent));
    }
    return absl::OkStatus();
  }

  // Exactly `size` bytes; the end of the stream before that is an error.
  absl::Status ReadExactly(uint8_t* out, size_t size) {
    size_t done = 0;
    while (done < size) {
      const ssize_t received = recv(fd_, out + done, size - done, 0);
      if (received < 0 && errno == EINTR) continue;
      if (received < 0) return ErrnoStatus("recv");
      if (received == 0) {
        return absl::UnavailableError(
            absl::StrCat("server closed the connection after ", done, " of ", size, " bytes"));
      }
      done += static_cast<size_t>(received);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<uint8_t>> Read(size_t size) {
    std::vector<uint8_t> bytes(size);
    if (absl::Status status = ReadExactly(bytes.data(), size); !status.ok()) return status;
    return bytes;
  }

  // Everything until the server closes its end.
  absl::StatusOr<std::vector<uint8_t>> ReadUntilEof() {
    std::vector<uint8_t> bytes;
    uint8_t buffer[4096];
    while (true) {
      const ssize_t received = recv(fd_, buffer, sizeof(buffer), 0);
      if (received < 0 && errno == EINTR) continue;
      if (received < 0) return ErrnoStatus("recv");
      if (received == 0) return bytes;
      bytes.insert(bytes.end(), buffer, buffer + received);
    }
  }

 private:
  explicit Connection(int fd) : fd_(fd) {}
  int fd_;
};

// The loop documented in handshake.h, reading exactly bytes_wanted() each time.
absl::Status RunHandshake(Connection& connection, Handshake& handshake) {
  while (true) {
    const absl::Span<const uint8_t> output = handshake.output();
    if (absl::Status status = connection.WriteAll(output); !status.ok()) return status;
    handshake.ConsumeOutput(output.size());
    switch (handshake.state()) {
      case Handshake::State::kDone:
        return absl::OkStatus();
      case Handshake::State::kStartTls:
        return absl::InternalError("nbdkit was started without TLS but acknowledged STARTTLS");
      case Handshake::State::kFailed:
        return absl::InternalError("handshake failed without Feed() reporting it");
      case Handshake::State::kRunning:
        break;
    }
    absl::StatusOr<std::vector<uint8_t>> bytes = connection.Read(handshake.bytes_wanted());
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<size_t> consumed = handshake.Feed(*bytes);
    if (!consumed.ok()) return consumed.status();
    if (*consumed != bytes->size()) {
      return absl::InternalError(absl::StrCat("Feed used ", *consumed, " of the ", bytes->size(),
                                              " bytes it asked for"));
    }
  }
}

class NbdkitHandshakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::StartNbdkit({"memory", "1M"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  std::unique_ptr<Connection> Connect() {
    absl::StatusOr<std::unique_ptr<Connection>> connection =
        Connection::Open(server_->socket_path());
    EXPECT_TRUE(connection.ok()) << connection.status();
    return connection.ok() ? *std::move(connection) : nullptr;
  }

  // Connects and runs a handshake with `options` to its successful end; the connection and the
  // handshake stay in connection_ and handshake_.
  void Negotiate(const HandshakeOptions& options) {
    connection_ = Connect();
    ASSERT_NE(connection_, nullptr);
    handshake_ = std::make_unique<Handshake>(options);
    const absl::Status status = RunHandshake(*connection_, *handshake_);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_EQ(handshake_->state(), Handshake::State::kDone);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Connection> connection_;
  std::unique_ptr<Handshake> handshake_;
};

// Reads the reply to a request without payload (a write): nbdkit may answer a structured
// connection with either a simple reply or a single NBD_REPLY_TYPE_NONE chunk.
void ExpectSuccessfulReplyWithoutPayload(Connection& connection, uint64_t cookie) {
  absl::StatusOr<std::vector<uint8_t>> magic = connection.Read(4);
  ASSERT_TRUE(magic.ok()) << magic.status();
  if (Load32(magic->data()) == kSimpleReplyMagic) {
    absl::StatusOr<std::vector<uint8_t>> rest = connection.Read(kSimpleReplySize - 4);
    ASSERT_TRUE(rest.ok()) << rest.status();
    EXPECT_EQ(Load32(rest->data()), 0u) << "error";
    EXPECT_EQ(Load64(rest->data() + 4), cookie);
    return;
  }
  ASSERT_EQ(Load32(magic->data()), kStructuredReplyMagic);
  absl::StatusOr<std::vector<uint8_t>> rest = connection.Read(kStructuredReplyHeaderSize - 4);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(Load16(rest->data()), kReplyFlagDone);
  EXPECT_EQ(Load16(rest->data() + 2), static_cast<uint16_t>(ReplyType::kNone));
  EXPECT_EQ(Load64(rest->data() + 4), cookie);
  EXPECT_EQ(Load32(rest->data() + 12), 0u);
}

// Reads the structured reply to an NBD_CMD_READ of `length` bytes at `offset` and reassembles
// the data chunks (holes read as zeroes). Every byte must be covered exactly once.
std::vector<uint8_t> ReadStructuredReadReply(Connection& connection, uint64_t cookie,
                                             uint64_t offset, size_t length) {
  std::vector<uint8_t> data(length, 0);
  std::vector<bool> covered(length, false);
  bool done = false;
  while (!done) {
    absl::StatusOr<std::vector<uint8_t>> header = connection.Read(kStructuredReplyHeaderSize);
    EXPECT_TRUE(header.ok()) << header.status();
    if (!header.ok()) break;
    EXPECT_EQ(Load32(header->data()), kStructuredReplyMagic);
    const uint16_t flags = Load16(header->data() + 4);
    const uint16_t type = Load16(header->data() + 6);
    EXPECT_EQ(Load64(header->data() + 8), cookie);
    const uint32_t payload_length = Load32(header->data() + 16);
    absl::StatusOr<std::vector<uint8_t>> payload = connection.Read(payload_length);
    EXPECT_TRUE(payload.ok()) << payload.status();
    if (!payload.ok()) break;
    done = (flags & kReplyFlagDone) != 0;
    uint64_t chunk_offset = 0;
    size_t chunk_length = 0;
    const uint8_t* chunk_data = nullptr;
    switch (static_cast<ReplyType>(type)) {
      case ReplyType::kNone:
        continue;
      case ReplyType::kOffsetData:
        EXPECT_GE(payload_length, 9u);
        chunk_offset = Load64(payload->data());
        chunk_length = payload_length - 8;
        chunk_data = payload->data() + 8;
        break;
      case ReplyType::kOffsetHole:
        EXPECT_EQ(payload_length, 12u);
        chunk_offset = Load64(payload->data());
        chunk_length = Load32(payload->data() + 8);
        break;
      default:
        ADD_FAILURE() << "unexpected chunk type " << type << " ("
                      << ReplyTypeName(static_cast<ReplyType>(type)) << ")";
        return data;
    }
    EXPECT_GE(chunk_offset, offset);
    EXPECT_LE(chunk_offset + chunk_length, offset + length);
    if (chunk_offset < offset || chunk_offset + chunk_length > offset + length) return data;
    for (size_t i = 0; i < chunk_length; ++i) {
      const size_t position = static_cast<size_t>(chunk_offset - offset) + i;
      EXPECT_FALSE(covered[position]) << "byte " << position << " sent twice";
      covered[position] = true;
      if (chunk_data != nullptr) data[position] = chunk_data[i];
    }
  }
  EXPECT_EQ(std::count(covered.begin(), covered.end(), false), 0) << "bytes never sent";
  return data;
}

TEST_F(NbdkitHandshakeTest, GoThenWriteReadAndDisconnect) {
  HandshakeOptions options;
  options.structured_replies = true;
  options.meta_contexts = {"base:allocation"};
  ASSERT_NO_FATAL_FAILURE(Negotiate(options));

  const ExportInfo& info = handshake_->export_info();
  EXPECT_FALSE(info.oldstyle);
  EXPECT_EQ(info.size, kExportSize);
  EXPECT_EQ(info.reply_mode, ReplyMode::kStructured);
  EXPECT_TRUE(info.has_flag(kFlagHasFlags));
  EXPECT_FALSE(info.read_only());
  EXPECT_TRUE(info.can_flush());
  EXPECT_TRUE(info.can_fua());
  EXPECT_TRUE(info.can_trim());
  EXPECT_TRUE(info.can_zero());
  EXPECT_TRUE(info.can_multi_conn());
  EXPECT_TRUE(info.can_df());  // only offered once structured replies are on
  ASSERT_EQ(info.meta_contexts.size(), 1u);
  EXPECT_EQ(info.meta_contexts[0].name, "base:allocation");
  EXPECT_EQ(info.FindMetaContext("base:allocation"), &info.meta_contexts[0]);

  // NBD_CMD_WRITE of a pattern, then NBD_CMD_READ of the same range.
  std::vector<uint8_t> pattern(kIoSize);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 7 + i / 251);
  uint8_t header[kExtendedRequestSize];
  RequestHeader write;
  write.command = Command::kWrite;
  write.cookie = 0x1111;
  write.offset = kIoOffset;
  write.length = kIoSize;
  const size_t header_size = EncodeRequest(write, /*extended=*/false, header);
  ASSERT_EQ(header_size, kCompactRequestSize);
  ASSERT_TRUE(connection_->WriteAll(absl::MakeConstSpan(header, header_size)).ok());
  ASSERT_TRUE(connection_->WriteAll(pattern).ok());
  ExpectSuccessfulReplyWithoutPayload(*connection_, write.cookie);

  RequestHeader read;
  read.command = Command::kRead;
  read.cookie = 0x2222;
  read.offset = kIoOffset;
  read.length = kIoSize;
  ASSERT_TRUE(connection_->WriteAll(absl::MakeConstSpan(
                  header, EncodeRequest(read, /*extended=*/false, header))).ok());
  const std::vector<uint8_t> data =
      ReadStructuredReadReply(*connection_, read.cookie, read.offset, kIoSize);
  EXPECT_TRUE(data == pattern) << "the data read back differs from the data written";

  // NBD_CMD_DISC has no reply: the server just closes the connection.
  RequestHeader disconnect;
  disconnect.command = Command::kDisc;
  disconnect.cookie = 0x3333;
  ASSERT_TRUE(connection_->WriteAll(absl::MakeConstSpan(
                  header, EncodeRequest(disconnect, /*extended=*/false, header))).ok());
  absl::StatusOr<std::vector<uint8_t>> rest = connection_->ReadUntilEof();
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_TRUE(rest->empty()) << rest->size() << " bytes after NBD_CMD_DISC";
}

TEST_F(NbdkitHandshakeTest, SimpleRepliesWhenNotRequested) {
  HandshakeOptions options;
  options.structured_replies = false;
  options.meta_contexts = {"base:allocation"};  // needs structured replies: not negotiated
  ASSERT_NO_FATAL_FAILURE(Negotiate(options));
  const ExportInfo& info = handshake_->export_info();
  EXPECT_EQ(info.reply_mode, ReplyMode::kSimple);
  EXPECT_TRUE(info.meta_contexts.empty());
  EXPECT_FALSE(info.can_df());
  EXPECT_EQ(info.size, kExportSize);
}

// After NBD_OPT_ABORT nbdkit acknowledges it (or just closes, which proto.md also allows).
void ExpectAbortAcknowledgedThenEof(Connection& connection) {
  absl::StatusOr<std::vector<uint8_t>> rest = connection.ReadUntilEof();
  ASSERT_TRUE(rest.ok()) << rest.status();
  if (rest->empty()) return;
  ASSERT_EQ(rest->size(), kOptionReplyHeaderSize);
  EXPECT_EQ(Load64(rest->data()), kOptionReplyMagic);
  EXPECT_EQ(Load32(rest->data() + 8), static_cast<uint32_t>(Option::kAbort));
  EXPECT_EQ(Load32(rest->data() + 12), static_cast<uint32_t>(OptionReply::kAck));
  EXPECT_EQ(Load32(rest->data() + 16), 0u);
}

TEST_F(NbdkitHandshakeTest, ListShowsTheDefaultExport) {
  HandshakeOptions options;
  options.goal = Goal::kList;
  ASSERT_NO_FATAL_FAILURE(Negotiate(options));
  ASSERT_EQ(handshake_->exports().size(), 1u);
  EXPECT_EQ(handshake_->exports()[0].name, "");
  ExpectAbortAcknowledgedThenEof(*connection_);
}

TEST_F(NbdkitHandshakeTest, InfoDescribesTheExportWithoutEnteringTransmission) {
  HandshakeOptions options;
  options.goal = Goal::kInfo;
  ASSERT_NO_FATAL_FAILURE(Negotiate(options));
  const ExportInfo& info = handshake_->export_info();
  EXPECT_EQ(info.size, kExportSize);
  EXPECT_TRUE(info.can_trim());
  EXPECT_TRUE(info.can_multi_conn());
  ExpectAbortAcknowledgedThenEof(*connection_);
}

TEST_F(NbdkitHandshakeTest, ListMetaContextsFindsBaseAllocation) {
  HandshakeOptions options;
  options.goal = Goal::kListMetaContexts;
  options.meta_contexts = {"base:"};
  ASSERT_NO_FATAL_FAILURE(Negotiate(options));
  EXPECT_THAT(handshake_->listed_meta_contexts(), ::testing::ElementsAre("base:allocation"));
  ExpectAbortAcknowledgedThenEof(*connection_);
}

TEST(NbdkitExportNameTest, UnknownExportIsNotFound) {
  // nbdkit serves any name by default; the exportname filter makes unknown names fail.
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::StartNbdkit(
      {"--filter=exportname", "memory", "1M", "exportname=disk", "exportname-strict=true"});
  ASSERT_TRUE(server.ok()) << server.status();
  for (const char* name : {"disk", "nope"}) {
    absl::StatusOr<std::unique_ptr<Connection>> connection =
        Connection::Open((*server)->socket_path());
    ASSERT_TRUE(connection.ok()) << connection.status();
    HandshakeOptions options;
    options.export_name = name;
    Handshake handshake(options);
    absl::Status status = RunHandshake(**connection, handshake);
    if (std::string(name) == "disk") {
      EXPECT_TRUE(status.ok()) << status;
      EXPECT_EQ(handshake.export_info().size, kExportSize);
      continue;
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
    EXPECT_THAT(std::string(status.message()),
                ::testing::HasSubstr(
                    "NBD_OPT_GO failed with NBD_REP_ERR_UNKNOWN: export 'nope' is not available"));
    EXPECT_EQ(handshake.state(), Handshake::State::kFailed);
  }
}

TEST_F(NbdkitHandshakeTest, OverlongExportNameFailsBeforeAnyOptionIsSent) {
  std::unique_ptr<Connection> connection = Connect();
  ASSERT_NE(connection, nullptr);
  HandshakeOptions options;
  options.export_name = std::string(5000, 'x');  // over the protocol's 4096-byte string limit
  Handshake handshake(options);
  absl::Status status = RunHandshake(*connection, handshake);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("export name is 5000 bytes"));
}

}  // namespace
}  // namespace nbd
