// Self-tests of the scripted server: a plain socket plus nbd::Handshake plays the client, so
// every byte the server sends is checked against a vector spelled out from proto.md.
#include "tests/testing/scripted_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/handshake.h"
#include "nbd/request.h"
#include "nbd/wire.h"
#include "nbdring/client.h"
#include "tests/testing/byte_builder.h"
#include "tests/testing/completion_tracker.h"

namespace nbd::testing {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

// The client side of a test: a blocking Unix socket whose every wait is bounded.
class RawClient {
 public:
  explicit RawClient(const std::string& socket_path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawClient() { CloseNow(); }

  bool connected() const { return connected_; }
  void CloseNow() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  absl::Status Send(absl::Span<const uint8_t> bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      ssize_t n = send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n < 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
      sent += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  // Receives exactly `size` bytes within `timeout`.
  absl::StatusOr<std::vector<uint8_t>> Receive(size_t size,
                                               absl::Duration timeout = absl::Seconds(5)) {
    std::vector<uint8_t> bytes(size);
    size_t received = 0;
    absl::Time deadline = absl::Now() + timeout;
    while (received < size) {
      absl::StatusOr<ssize_t> n = ReceiveSome(bytes.data() + received, size - received,
                                              deadline);
      if (!n.ok()) return n.status();
      if (*n == 0) {
        return absl::UnavailableError(absl::StrCat("server closed after ", received, " of ",
                                                   size, " bytes"));
      }
      received += static_cast<size_t>(*n);
    }
    return bytes;
  }

  // One recv() call: how many bytes it returned (0 at end of stream).
  absl::StatusOr<ssize_t> ReceiveSome(uint8_t* data, size_t size, absl::Time deadline) {
    pollfd fd = {fd_, POLLIN, 0};
    int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (timeout_ms <= 0 || poll(&fd, 1, timeout_ms) != 1) {
      return absl::DeadlineExceededError("nothing from the server in time");
    }
    ssize_t n = recv(fd_, data, size, 0);
    if (n < 0) return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    return n;
  }

  // True when the server closes its end within `timeout`, discarding anything before that.
  bool ClosedByServer(absl::Duration timeout = absl::Seconds(5)) {
    absl::Time deadline = absl::Now() + timeout;
    uint8_t buffer[256];
    while (true) {
      absl::StatusOr<ssize_t> n = ReceiveSome(buffer, sizeof(buffer), deadline);
      if (!n.ok()) return false;
      if (*n == 0) return true;
    }
  }

  // Runs nbd::Handshake over the socket.
  absl::StatusOr<ExportInfo> Negotiate(HandshakeOptions options) {
    Handshake handshake(std::move(options));
    while (handshake.state() == Handshake::State::kRunning) {
      absl::Span<const uint8_t> output = handshake.output();
      if (!output.empty()) {
        absl::Status status = Send(output);
        if (!status.ok()) return status;
        handshake.ConsumeOutput(output.size());
      }
      if (handshake.state() != Handshake::State::kRunning) break;
      size_t wanted = handshake.bytes_wanted();
      if (wanted == 0) continue;
      absl::StatusOr<std::vector<uint8_t>> input = Receive(wanted);
      if (!input.ok()) return input.status();
      absl::StatusOr<size_t> consumed = handshake.Feed(*input);
      if (!consumed.ok()) return consumed.status();
      if (*consumed != input->size()) {
        return absl::InternalError("handshake left bytes it was given unconsumed");
      }
    }
    if (handshake.state() != Handshake::State::kDone) {
      return absl::InternalError("handshake did not finish");
    }
    absl::Status status = Send(handshake.output());
    if (!status.ok()) return status;
    return handshake.export_info();
  }

  absl::Status SendRequest(Command command, uint64_t cookie, uint64_t offset, uint64_t length,
                           absl::Span<const uint8_t> payload = {}) {
    RequestHeader request;
    request.command = command;
    request.cookie = cookie;
    request.offset = offset;
    request.length = length;
    uint8_t header[kCompactRequestSize];
    EncodeRequest(request, /*extended=*/false, header);
    absl::Status status = Send(header);
    if (!status.ok()) return status;
    return Send(payload);
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

HandshakeOptions StructuredWith(std::vector<std::string> meta_contexts = {}) {
  HandshakeOptions options;
  options.structured_replies = true;
  options.meta_contexts = std::move(meta_contexts);
  return options;
}

TEST(ScriptedServerTest, NegotiatesTheScriptedExport) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(kClientFlagFixedNewstyle | kClientFlagNoZeroes),
      HandleOptionsUntilGo({.size = 3 << 20,
                            .transmission_flags = kFlagHasFlags | kFlagReadOnly,
                            .meta_contexts = {{7, "base:allocation"}},
                            .block_size = {.advertised = true,
                                           .minimum = 512,
                                           .preferred = 4096,
                                           .maximum = 1 << 20}}),
      ExpectDisconnect(),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.connected());
  absl::StatusOr<ExportInfo> info = client.Negotiate(StructuredWith({"base:allocation"}));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, 3u << 20);
  EXPECT_EQ(info->transmission_flags, kFlagHasFlags | kFlagReadOnly);
  EXPECT_EQ(info->reply_mode, ReplyMode::kStructured);
  ASSERT_EQ(info->meta_contexts.size(), 1u);
  EXPECT_EQ(info->meta_contexts[0].id, 7u);
  EXPECT_EQ(info->meta_contexts[0].name, "base:allocation");
  EXPECT_TRUE(info->block_size.advertised);
  EXPECT_EQ(info->block_size.minimum, 512u);
  EXPECT_EQ(info->block_size.maximum, 1u << 20);

  ASSERT_TRUE(client.SendRequest(Command::kDisc, 1, 0, 0).ok());
  client.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
  std::vector<uint32_t> options;
  for (const RecordedOption& option : server.options()) options.push_back(option.option);
  EXPECT_THAT(options, ElementsAre(static_cast<uint32_t>(Option::kStructuredReply),
                                   static_cast<uint32_t>(Option::kSetMetaContext),
                                   static_cast<uint32_t>(Option::kGo)));
}

TEST(ScriptedServerTest, RefusesStructuredRepliesWhenTheExportSaysSo) {
  ScriptedServer server({Greet(), ExpectClientFlags(),
                         HandleOptionsUntilGo({.structured_replies = false}), ExpectDisconnect()});
  RawClient client(server.socket_path());
  absl::StatusOr<ExportInfo> info = client.Negotiate(StructuredWith());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->reply_mode, ReplyMode::kSimple);
  EXPECT_EQ(info->size, 1u << 20);
  ASSERT_TRUE(client.SendRequest(Command::kDisc, 1, 0, 0).ok());
  client.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST(ScriptedServerTest, GreetsWithTheSpecBytes) {
  ScriptedServer server({Greet(), Stall()});
  RawClient client(server.socket_path());
  absl::StatusOr<std::vector<uint8_t>> greeting = client.Receive(kNewstyleGreetingSize);
  ASSERT_TRUE(greeting.ok()) << greeting.status();
  // "NBDMAGIC", "IHAVEOPT", flags FIXED_NEWSTYLE | NO_ZEROES.
  EXPECT_THAT(*greeting, ElementsAreArray(ByteBuilder()
                                              .Str("NBDMAGIC")
                                              .Str("IHAVEOPT")
                                              .U16(0x0003)
                                              .bytes()));
  client.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST(ScriptedServerTest, AnswersAnOptionWronglyOnRequest) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      ExpectOption(Option::kStructuredReply),
      SendOptionReply(Option::kList, OptionReply::kAck),
      ExpectClose(),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Receive(kNewstyleGreetingSize).ok());
  ASSERT_TRUE(client.Send(ByteBuilder().U32(kClientFlagFixedNewstyle).bytes()).ok());
  ASSERT_TRUE(client.Send(ByteBuilder().U64(kIHaveOpt).U32(8).U32(0).bytes()).ok());
  absl::StatusOr<std::vector<uint8_t>> reply = client.Receive(kOptionReplyHeaderSize);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_THAT(*reply, ElementsAreArray(ByteBuilder()
                                           .U64(0x0003e889045565a9)
                                           .U32(3)  // NBD_OPT_LIST, not the option asked
                                           .U32(1)  // NBD_REP_ACK
                                           .U32(0)
                                           .bytes()));
  client.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST(ScriptedServerTest, StopsAtTheNamedOption) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendRaw(OptionReplyBytes(static_cast<uint32_t>(Option::kGo),
                               static_cast<uint32_t>(OptionReply::kErrPolicy))),
      ExpectClose(),
  });
  RawClient client(server.socket_path());
  absl::StatusOr<ExportInfo> info = client.Negotiate(StructuredWith());
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(std::string(info.status().message()), HasSubstr("NBD_REP_ERR_POLICY"));
  client.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST(ScriptedServerTest, RecordsRequestsAndRepliesInAnyOrder) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(),
      ExpectRequest(Command::kWrite),
      ExpectRequest(Command::kRead),
      ReplyReadPattern(1),
      ReplyNone(0),
      ExpectDisconnect(),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  std::vector<uint8_t> data = {1, 2, 3, 4};
  ASSERT_TRUE(client.SendRequest(Command::kWrite, 0x1111, 4096, data.size(), data).ok());
  ASSERT_TRUE(client.SendRequest(Command::kRead, 0x2222, 1000, 5).ok());

  absl::StatusOr<std::vector<uint8_t>> read_reply = client.Receive(20 + 8 + 5);
  ASSERT_TRUE(read_reply.ok()) << read_reply.status();
  EXPECT_THAT(*read_reply, ElementsAreArray(ByteBuilder()
                                                .U32(0x668e33ef)
                                                .U16(1)  // NBD_REPLY_FLAG_DONE
                                                .U16(1)  // NBD_REPLY_TYPE_OFFSET_DATA
                                                .U64(0x2222)
                                                .U32(8 + 5)
                                                .U64(1000)
                                                .Bytes(PatternBytes(1000, 5))
                                                .bytes()));
  absl::StatusOr<std::vector<uint8_t>> write_reply = client.Receive(20);
  ASSERT_TRUE(write_reply.ok()) << write_reply.status();
  EXPECT_THAT(*write_reply, ElementsAreArray(ByteBuilder()
                                                 .U32(0x668e33ef)
                                                 .U16(1)  // DONE
                                                 .U16(0)  // NBD_REPLY_TYPE_NONE
                                                 .U64(0x1111)
                                                 .U32(0)
                                                 .bytes()));
  ASSERT_TRUE(client.SendRequest(Command::kDisc, 0x3333, 0, 0).ok());
  client.CloseNow();
  ASSERT_TRUE(server.Wait().ok()) << server.Wait();

  std::vector<RecordedRequest> requests = server.requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].header.command, Command::kWrite);
  EXPECT_EQ(requests[0].header.cookie, 0x1111u);
  EXPECT_EQ(requests[0].header.offset, 4096u);
  EXPECT_EQ(requests[0].header.length, 4u);
  EXPECT_EQ(requests[0].payload, data);
  EXPECT_EQ(requests[1].header.command, Command::kRead);
  EXPECT_EQ(requests[1].header.cookie, 0x2222u);
  EXPECT_EQ(requests[1].header.offset, 1000u);
  EXPECT_EQ(requests[1].header.length, 5u);
  EXPECT_EQ(requests[2].header.command, Command::kDisc);
}

TEST(ScriptedServerTest, BuildsEveryStructuredChunkFromTheSpecLayout) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo({.meta_contexts = {{1, "base:allocation"}}}),
      ExpectRequest(Command::kRead),
      ReplyHole(0, 512, 256, /*done=*/false),
      ReplyReadData(0, 0, {9, 8}, /*done=*/false),
      ReplyError(0, kEIo, "bad sector", /*done=*/true),
      ExpectRequest(Command::kBlockStatus),
      ReplyBlockStatus(1, 1, {{4096, kStateHole | kStateZero}, {512, 0}}, /*done=*/true),
      Stall(),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith({"base:allocation"})).ok());
  ASSERT_TRUE(client.SendRequest(Command::kRead, 5, 8192, 1024).ok());
  std::vector<uint8_t> expected = ByteBuilder()
                                      // OFFSET_HOLE: offset, hole size
                                      .U32(0x668e33ef).U16(0).U16(2).U64(5).U32(12)
                                      .U64(8192 + 512).U32(256)
                                      // OFFSET_DATA: offset, data
                                      .U32(0x668e33ef).U16(0).U16(1).U64(5).U32(10)
                                      .U64(8192).U8(9).U8(8)
                                      // ERROR: error, message length, message
                                      .U32(0x668e33ef).U16(1).U16(0x8001).U64(5).U32(16)
                                      .U32(5).U16(10).Str("bad sector")
                                      .bytes();
  absl::StatusOr<std::vector<uint8_t>> read_replies = client.Receive(expected.size());
  ASSERT_TRUE(read_replies.ok()) << read_replies.status();
  EXPECT_THAT(*read_replies, ElementsAreArray(expected));

  ASSERT_TRUE(client.SendRequest(Command::kBlockStatus, 6, 0, 4608).ok());
  expected = ByteBuilder()
                 .U32(0x668e33ef).U16(1).U16(5).U64(6).U32(4 + 2 * 8)
                 .U32(1)             // context id
                 .U32(4096).U32(3)   // hole | zero
                 .U32(512).U32(0)
                 .bytes();
  absl::StatusOr<std::vector<uint8_t>> status_reply = client.Receive(expected.size());
  ASSERT_TRUE(status_reply.ok()) << status_reply.status();
  EXPECT_THAT(*status_reply, ElementsAreArray(expected));
  client.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST(ScriptedServerTest, UsesSimpleRepliesWhenNotNegotiated) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo({.structured_replies = false}),
      ExpectRequests(2, Command::kRead),
      ReplyError(1, kENoSpc, "dropped in simple mode"),
      ReplyReadPattern(0),
      Stall(),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  ASSERT_TRUE(client.SendRequest(Command::kRead, 10, 0, 3).ok());
  ASSERT_TRUE(client.SendRequest(Command::kRead, 11, 0, 3).ok());
  std::vector<uint8_t> expected = ByteBuilder()
                                      .U32(0x67446698).U32(28).U64(11)
                                      .U32(0x67446698).U32(0).U64(10)
                                      .Bytes(PatternBytes(0, 3))
                                      .bytes();
  absl::StatusOr<std::vector<uint8_t>> replies = client.Receive(expected.size());
  ASSERT_TRUE(replies.ok()) << replies.status();
  EXPECT_THAT(*replies, ElementsAreArray(expected));
  client.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST(ScriptedServerTest, ReportsAnUnexpectedCommand) {
  ScriptedServer server({Greet(), ExpectClientFlags(), HandleOptionsUntilGo(),
                         ExpectRequest(Command::kRead), Stall()});
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  ASSERT_TRUE(client.SendRequest(Command::kFlush, 1, 0, 0).ok());
  EXPECT_TRUE(client.ClosedByServer());
  absl::Status result = server.Wait();
  EXPECT_EQ(result.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.message()),
              HasSubstr("action 3 ExpectRequest(NBD_CMD_READ): request 0 is NBD_CMD_FLUSH (3), "
                        "expected NBD_CMD_READ"));
}

TEST(ScriptedServerTest, ReportsARepliedRequestThatNeverArrived) {
  ScriptedServer server({Greet(), ExpectClientFlags(), HandleOptionsUntilGo(), ReplyNone(2)});
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  EXPECT_TRUE(client.ClosedByServer());
  EXPECT_THAT(std::string(server.Wait().message()),
              HasSubstr("replies to request 2 but only 0 requests were received"));
}

TEST(ScriptedServerTest, ReceivesTimeOutInsteadOfHanging) {
  ScriptedServer server({Greet(), ExpectClientFlags()}, {.io_timeout = absl::Milliseconds(200)});
  RawClient client(server.socket_path());
  absl::Time start = absl::Now();
  absl::Status result = server.Wait(absl::Seconds(10));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(result.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(result.message()),
              HasSubstr("no client flags from the client within 200ms"));
}

TEST(ScriptedServerTest, ReportsAClientThatClosesEarly) {
  ScriptedServer server({Greet(), ExpectClientFlags()});
  {
    RawClient client(server.socket_path());
    ASSERT_TRUE(client.Receive(kNewstyleGreetingSize).ok());
    ASSERT_TRUE(client.Send(ByteBuilder().U16(0).bytes()).ok());
  }
  absl::Status result = server.Wait();
  EXPECT_EQ(result.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(result.message()),
              HasSubstr("client closed the connection after 2 of the 4 bytes of the client flags"));
}

TEST(ScriptedServerTest, WaitsForAClientOnlyAsLongAsTheIoTimeout) {
  ScriptedServer server({Greet()}, {.io_timeout = absl::Milliseconds(100)});
  absl::Status result = server.Wait(absl::Seconds(10));
  EXPECT_EQ(result.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(result.message()), HasSubstr("no client connected within 100ms"));
}

TEST(ScriptedServerTest, DestructorInterruptsAStall) {
  absl::Time start = absl::Now();
  {
    ScriptedServer server({Greet(), Stall()});
    RawClient client(server.socket_path());
    ASSERT_TRUE(client.Receive(kNewstyleGreetingSize).ok());
  }
  {
    ScriptedServer unused_server({Greet()});  // nobody ever connects
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST(ScriptedServerTest, WaitGivesUpOnAScriptStillRunning) {
  ScriptedServer server({Greet(), Stall()});
  RawClient client(server.socket_path());
  absl::Status result = server.Wait(absl::Milliseconds(50));
  EXPECT_EQ(result.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(result.message()), HasSubstr("script still running after 50ms"));
}

TEST(ScriptedServerTest, TrickleSendsOneBytePerSend) {
  ScriptedServer server({Trickle(absl::Milliseconds(100)), Greet(), Stall()});
  RawClient client(server.socket_path());
  uint8_t byte[kNewstyleGreetingSize];
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  absl::StatusOr<ssize_t> first = client.ReceiveSome(byte, sizeof(byte), deadline);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, 1);
  EXPECT_EQ(byte[0], 'N');
  absl::StatusOr<ssize_t> second = client.ReceiveSome(byte, sizeof(byte), deadline);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, 1);
  EXPECT_EQ(byte[0], 'B');
}

TEST(ScriptedServerTest, TrickledHandshakeStillNegotiates) {
  ScriptedServer server({Trickle(absl::Microseconds(50)), Greet(), ExpectClientFlags(),
                         HandleOptionsUntilGo({.size = 12345}), Stall()});
  RawClient client(server.socket_path());
  absl::StatusOr<ExportInfo> info = client.Negotiate(StructuredWith());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, 12345u);
}

TEST(ScriptedServerTest, SendByteByByteDeliversEveryByte) {
  ScriptedServer server({SendByteByByte({1, 2, 3}, absl::Milliseconds(20)), Stall()});
  RawClient client(server.socket_path());
  absl::StatusOr<std::vector<uint8_t>> bytes = client.Receive(3);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_THAT(*bytes, ElementsAre(1, 2, 3));
}

TEST(ScriptedServerTest, CloseEndsTheConnectionAndSecondConnectionsAreRefused) {
  ScriptedServer server({Greet(), Close()});
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Receive(kNewstyleGreetingSize).ok());
  EXPECT_TRUE(client.ClosedByServer());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
  RawClient second(server.socket_path());
  EXPECT_FALSE(second.connected());
}

TEST(ScriptedServerTest, ExpectDisconnectRejectsAClientThatJustCloses) {
  ScriptedServer server({Greet(), ExpectClientFlags(), HandleOptionsUntilGo(), ExpectDisconnect()});
  {
    RawClient client(server.socket_path());
    ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  }
  EXPECT_THAT(std::string(server.Wait().message()),
              HasSubstr("client closed the connection after 0 of the 28 bytes of the request header"));
}

TEST(ScriptedServerTest, CustomActionsSeeTheConnection) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(),
      ExpectRequest(Command::kRead),
      Custom("ReplyWithChunkHeaderBytes",
             [](ScriptedConnection& connection) -> absl::Status {
               absl::StatusOr<const RecordedRequest*> request = connection.request(0);
               if (!request.ok()) return request.status();
               if (connection.reply_mode() != ReplyMode::kStructured) {
                 return absl::FailedPreconditionError("structured replies expected");
               }
               return connection.Send(ChunkHeaderBytes(kReplyFlagDone, 0x1234,
                                                       (*request)->header.cookie, 0));
             }),
      Stall(),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  ASSERT_TRUE(client.SendRequest(Command::kRead, 77, 0, 1).ok());
  absl::StatusOr<std::vector<uint8_t>> reply = client.Receive(20);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_THAT(*reply, ElementsAreArray(
                          ByteBuilder().U32(0x668e33ef).U16(1).U16(0x1234).U64(77).U32(0).bytes()));
}

TEST(ScriptedServerTest, CutAfterShutsTheConnectionMidMessage) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(),
      ExpectRequest(Command::kRead),
      ReplyReadPattern(0, 0, 2, /*done=*/false),
      CutAfter(20 + 8 + 1),
      ReplyReadPattern(0, 2, 3, /*done=*/true),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  ASSERT_TRUE(client.SendRequest(Command::kRead, 9, 100, 5).ok());
  std::vector<uint8_t> expected = ByteBuilder()
                                      .U32(0x668e33ef).U16(0).U16(1).U64(9).U32(8 + 2)
                                      .U64(100).Bytes(PatternBytes(100, 2))
                                      .U32(0x668e33ef).U16(1).U16(1).U64(9).U32(8 + 3)
                                      .U64(102).Bytes(PatternBytes(102, 1))  // cut here
                                      .bytes();
  absl::StatusOr<std::vector<uint8_t>> replies = client.Receive(expected.size());
  ASSERT_TRUE(replies.ok()) << replies.status();
  EXPECT_THAT(*replies, ElementsAreArray(expected));
  EXPECT_TRUE(client.ClosedByServer());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST(ScriptedServerTest, ReadsAWritePayloadOnlyWhenTold) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(),
      ExpectRequestHeader(Command::kWrite),
      ReplyNone(0),
      ReceiveWritePayload(0),
      ExpectDisconnect(),
  });
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  std::vector<uint8_t> data = {5, 6, 7};
  ASSERT_TRUE(client.SendRequest(Command::kWrite, 42, 0, data.size(), data).ok());
  absl::StatusOr<std::vector<uint8_t>> reply = client.Receive(20);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_THAT(*reply,
              ElementsAreArray(ByteBuilder().U32(0x668e33ef).U16(1).U16(0).U64(42).U32(0).bytes()));
  ASSERT_TRUE(client.SendRequest(Command::kDisc, 43, 0, 0).ok());
  client.CloseNow();
  ASSERT_TRUE(server.Wait().ok()) << server.Wait();
  std::vector<RecordedRequest> requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].payload, data);
}

TEST(ScriptedServerTest, RefusesToReadAPayloadOfARead) {
  ScriptedServer server({Greet(), ExpectClientFlags(), HandleOptionsUntilGo(),
                         ExpectRequest(Command::kRead), ReceiveWritePayload(0)});
  RawClient client(server.socket_path());
  ASSERT_TRUE(client.Negotiate(StructuredWith()).ok());
  ASSERT_TRUE(client.SendRequest(Command::kRead, 1, 0, 512).ok());
  EXPECT_THAT(std::string(server.Wait().message()),
              HasSubstr("request 0 is NBD_CMD_READ (0), which carries no payload"));
}

// --- Several connections ----------------------------------------------------------------------

// A multi-conn export whose base:allocation context has id 7 + `connection`: the spec lets a
// server number contexts differently on each connection.
ScriptedExport MultiConnExport(int connection) {
  ScriptedExport export_config{.meta_contexts = {{7u + connection, "base:allocation"}}};
  export_config.transmission_flags |= kFlagCanMultiConn;
  return export_config;
}

TEST(ScriptedServerTest, EachConnectionRunsItsOwnScriptInAcceptOrder) {
  ScriptedServer server(2, [](int connection) {
    return std::vector<Action>{Greet(), ExpectClientFlags(),
                               HandleOptionsUntilGo(MultiConnExport(connection)),
                               ExpectRequest(Command::kRead), ReplyReadPattern(0),
                               ExpectDisconnect()};
  });
  RawClient first(server.socket_path());
  absl::StatusOr<ExportInfo> first_info = first.Negotiate(StructuredWith({"base:allocation"}));
  ASSERT_TRUE(first_info.ok()) << first_info.status();
  RawClient second(server.socket_path());
  absl::StatusOr<ExportInfo> second_info = second.Negotiate(StructuredWith({"base:allocation"}));
  ASSERT_TRUE(second_info.ok()) << second_info.status();
  // Both connections are taken: a third is refused rather than left waiting.
  RawClient third(server.socket_path());
  EXPECT_FALSE(third.connected());

  EXPECT_TRUE(first_info->can_multi_conn());
  ASSERT_EQ(first_info->meta_contexts.size(), 1u);
  EXPECT_EQ(first_info->meta_contexts[0].id, 7u);
  ASSERT_EQ(second_info->meta_contexts.size(), 1u);
  EXPECT_EQ(second_info->meta_contexts[0].id, 8u);

  // Each connection answers its own request, the second connection first.
  ASSERT_TRUE(second.SendRequest(Command::kRead, 22, 8192, 512).ok());
  absl::StatusOr<std::vector<uint8_t>> second_reply = second.Receive(20 + 8 + 512);
  ASSERT_TRUE(second_reply.ok()) << second_reply.status();
  ASSERT_TRUE(first.SendRequest(Command::kRead, 11, 0, 512).ok());
  absl::StatusOr<std::vector<uint8_t>> first_reply = first.Receive(20 + 8 + 512);
  ASSERT_TRUE(first_reply.ok()) << first_reply.status();
  EXPECT_EQ(std::vector<uint8_t>(second_reply->begin() + 28, second_reply->end()),
            PatternBytes(8192, 512));
  EXPECT_EQ(std::vector<uint8_t>(first_reply->begin() + 28, first_reply->end()),
            PatternBytes(0, 512));
  ASSERT_TRUE(first.SendRequest(Command::kDisc, 12, 0, 0).ok());
  ASSERT_TRUE(second.SendRequest(Command::kDisc, 23, 0, 0).ok());
  first.CloseNow();
  second.CloseNow();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();

  for (int connection : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("connection ", connection));
    std::vector<RecordedRequest> requests = server.requests(connection);
    ASSERT_EQ(requests.size(), 2u);
    EXPECT_EQ(requests[0].header.cookie, connection == 0 ? 11u : 22u);
    EXPECT_EQ(requests[1].header.command, Command::kDisc);
    ASSERT_FALSE(server.options(connection).empty());
    EXPECT_EQ(server.options(connection).back().option, static_cast<uint32_t>(Option::kGo));
  }
  // requests() and options() without an index are connection 0's.
  ASSERT_EQ(server.requests().size(), 2u);
  EXPECT_EQ(server.requests()[0].header.cookie, 11u);
  EXPECT_EQ(server.options().size(), server.options(0).size());
  EXPECT_TRUE(server.requests(2).empty());
}

TEST(ScriptedServerTest, NamesTheConnectionWhoseScriptFailed) {
  ScriptedServer server(2, [](int connection) {
    return std::vector<Action>{Greet(), ExpectClientFlags(), HandleOptionsUntilGo(),
                               ExpectRequest(connection == 0 ? Command::kRead : Command::kWrite)};
  });
  RawClient first(server.socket_path());
  ASSERT_TRUE(first.Negotiate(StructuredWith()).ok());
  RawClient second(server.socket_path());
  ASSERT_TRUE(second.Negotiate(StructuredWith()).ok());
  ASSERT_TRUE(first.SendRequest(Command::kRead, 1, 0, 512).ok());
  ASSERT_TRUE(second.SendRequest(Command::kRead, 2, 0, 512).ok());
  absl::Status result = server.Wait();
  EXPECT_EQ(result.code(), absl::StatusCode::kFailedPrecondition) << result;
  EXPECT_THAT(std::string(result.message()),
              HasSubstr("connection 1: action 3 ExpectRequest(NBD_CMD_WRITE): request 0 is "
                        "NBD_CMD_READ (0), expected NBD_CMD_WRITE"));
  EXPECT_EQ(server.requests(0).size(), 1u);
  EXPECT_EQ(server.requests(1).size(), 1u);
}

TEST(ScriptedServerTest, WaitsForEveryConnectionOnlyAsLongAsTheIoTimeout) {
  ScriptedServer server(
      2, [](int) { return std::vector<Action>{Greet(), ExpectClientFlags()}; },
      {.io_timeout = absl::Milliseconds(200)});
  RawClient first(server.socket_path());
  ASSERT_TRUE(first.Receive(kNewstyleGreetingSize).ok());
  ASSERT_TRUE(first.Send(ByteBuilder().U32(kClientFlagFixedNewstyle).bytes()).ok());
  absl::Status result = server.Wait(absl::Seconds(10));
  EXPECT_EQ(result.code(), absl::StatusCode::kDeadlineExceeded) << result;
  EXPECT_THAT(std::string(result.message()),
              HasSubstr("connection 1: no client connected within 200ms"));
}

// nbdring's Client with connections = 2 opens both (one handshake after the other), then
// spreads requests over them: two reads in flight at once go one to each connection.
TEST(ScriptedServerTest, MultiConnClientGetsOneScriptPerConnection) {
  std::mutex mutex;
  std::condition_variable changed;
  int connections_with_a_read = 0;
  // Replies only once both connections have a read, so the client cannot send both on one.
  auto both_have_a_read = [&](ScriptedConnection&) {
    std::unique_lock<std::mutex> lock(mutex);
    ++connections_with_a_read;
    changed.notify_all();
    if (!changed.wait_for(lock, std::chrono::seconds(10),
                          [&] { return connections_with_a_read == 2; })) {
      return absl::DeadlineExceededError("the other connection got no read within 10 s");
    }
    return absl::OkStatus();
  };
  ScriptedServer server(2, [&](int) {
    ScriptedExport export_config;
    export_config.transmission_flags |= kFlagCanMultiConn;
    return std::vector<Action>{Greet(),
                               ExpectClientFlags(),
                               HandleOptionsUntilGo(export_config),
                               ExpectRequest(Command::kRead),
                               Custom("BothConnectionsHaveARead", both_have_a_read),
                               ReplyReadPattern(0),
                               ExpectDisconnect()};
  });
  nbdring::ClientOptions options;
  options.uri = server.uri();
  options.connections = 2;
  options.connect_timeout = absl::Seconds(5);
  options.request_timeout = absl::Seconds(15);
  nbdring::testing::CompletionTracker tracker;
  absl::StatusOr<std::unique_ptr<nbdring::Client>> client = nbdring::Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_EQ((*client)->connections(), 2);

  std::vector<uint8_t> first(4096), second(4096);
  // What the tracker counts each read under.
  auto read_at = [](uint64_t offset) {
    nbdring::Operation read;
    read.offset = offset;
    read.length = 4096;
    return read;
  };
  const nbdring::Operation first_read = read_at(0);
  const nbdring::Operation second_read = read_at(65536);
  (*client)->Pread(first.data(), first.size(), 0, tracker.Callback(&first_read));
  (*client)->Pread(second.data(), second.size(), 65536, tracker.Callback(&second_read));
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(20)))
      << tracker.completed() << " of 2 reads completed";
  EXPECT_TRUE(tracker.first_error().ok()) << tracker.first_error();
  EXPECT_EQ(first, PatternBytes(0, 4096));
  EXPECT_EQ(second, PatternBytes(65536, 4096));
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(tracker.ExactlyOnce());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();

  std::vector<uint64_t> offsets;
  for (int connection : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("connection ", connection));
    std::vector<uint32_t> negotiated;
    for (const RecordedOption& option : server.options(connection)) {
      negotiated.push_back(option.option);
    }
    EXPECT_THAT(negotiated, Contains(static_cast<uint32_t>(Option::kGo)));
    std::vector<RecordedRequest> requests = server.requests(connection);
    ASSERT_EQ(requests.size(), 2u);
    offsets.push_back(requests[0].header.offset);
    EXPECT_EQ(requests[1].header.command, Command::kDisc);
  }
  EXPECT_THAT(offsets, UnorderedElementsAre(0u, 65536u));
}

TEST(ScriptedServerTest, PatternNeverRepeatsAtPowerOfTwoStridesAndIsNeverZero) {
  for (uint64_t offset : {0ull, 1ull, 4095ull, 1ull << 40}) {
    EXPECT_NE(PatternByte(offset), 0);
    EXPECT_NE(PatternByte(offset), PatternByte(offset + 4096));
    EXPECT_NE(PatternByte(offset), PatternByte(offset + 512));
  }
}

}  // namespace
}  // namespace nbd::testing
