// Client::Connect against servers that break negotiation. Each scenario asserts that Connect
// fails within the connect timeout with a status naming what the server did wrong, and that
// the client dropped the connection (the script's ExpectClose() sees the close). The legal
// scenarios (fallbacks, trickled bytes) assert that Connect succeeds.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/wire.h"
#include "nbdring/client.h"
#include "tests/testing/byte_builder.h"
#include "tests/testing/scripted_server.h"

namespace nbd::testing {
namespace {

using ::nbdring::Client;
using ::nbdring::ClientOptions;
using ::testing::HasSubstr;

constexpr absl::Duration kConnectTimeout = absl::Seconds(3);
// Connect must give up within its timeout; this allows for a slow sanitizer build.
constexpr absl::Duration kConnectSlack = absl::Seconds(3);

class HandshakeFaultTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<Client>> Connect(const ScriptedServer& server,
                                                  absl::Duration timeout = kConnectTimeout) {
    ClientOptions options;
    options.uri = server.uri();
    options.connect_timeout = timeout;
    options.request_timeout = absl::Seconds(5);
    absl::Time start = absl::Now();
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_LT(absl::Now() - start, timeout + kConnectSlack) << "Connect overran its timeout";
    return client;
  }

  // Connect must fail with `code` and a message containing every phrase in `phrases`.
  void ExpectConnectFails(const ScriptedServer& server, absl::StatusCode code,
                          const std::vector<std::string>& phrases) {
    absl::StatusOr<std::unique_ptr<Client>> client = Connect(server);
    ASSERT_FALSE(client.ok()) << "Connect succeeded against a misbehaving server";
    EXPECT_EQ(client.status().code(), code) << client.status();
    for (const std::string& phrase : phrases) {
      EXPECT_THAT(std::string(client.status().message()), HasSubstr(phrase));
    }
  }

  Watchdog watchdog_{::testing::UnitTest::GetInstance()->current_test_info()->name(),
                     absl::Seconds(60)};
};

std::vector<uint8_t> OptionReplyHeader(Option option, OptionReply reply, uint32_t length) {
  return ByteBuilder()
      .U64(kOptionReplyMagic)
      .U32(static_cast<uint32_t>(option))
      .U32(static_cast<uint32_t>(reply))
      .U32(length)
      .bytes();
}

std::vector<uint8_t> InfoExportReply(uint64_t size, uint16_t flags) {
  return OptionReplyBytes(static_cast<uint32_t>(Option::kGo),
                          static_cast<uint32_t>(OptionReply::kInfo),
                          ByteBuilder().U16(0).U64(size).U16(flags).bytes());
}

TEST_F(HandshakeFaultTest, WrongNbdMagic) {
  ScriptedServer server({
      SendRaw(ByteBuilder().Str("NBDMAGIX").U64(kIHaveOpt).U16(kFlagFixedNewstyle).bytes()),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"0x4e42444d41474958 instead of NBDMAGIC", "not an NBD server"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, WrongIHaveOpt) {
  ScriptedServer server({
      SendRaw(ByteBuilder().U64(kInitPasswd).Str("IHAVEOPZ").U16(kFlagFixedNewstyle).bytes()),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"server greeting magic 0x49484156454f505a is neither IHAVEOPT"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, OptionReplyForTheWrongOption) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendOptionReply(Option::kList, OptionReply::kAck),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"server sent NBD_REP_ACK for NBD_OPT_LIST while NBD_OPT_GO was pending"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, OptionReplyAbsurdlyLong) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      // One send: the client may close as soon as it has read the header.
      SendRaw(ByteBuilder()
                  .Bytes(OptionReplyHeader(Option::kGo, OptionReply::kInfo, 0xFFFFFFF0))
                  .U16(0)
                  .U64(1 << 20)
                  .U16(kFlagHasFlags)
                  .bytes()),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"NBD_REP_INFO to NBD_OPT_GO is 4294967280 bytes, more than the limit"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, OptionReplyWithBadMagic) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendRaw(ByteBuilder().U64(0x0123456789abcdef).U32(7).U32(1).U32(0).bytes()),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"option reply magic is 0x123456789abcdef", "reply to NBD_OPT_GO"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, ExportSizeOfTwoToThe63) {
  std::vector<uint8_t> replies =
      ByteBuilder()
          .Bytes(InfoExportReply(uint64_t{1} << 63, kFlagHasFlags))
          .Bytes(OptionReplyBytes(static_cast<uint32_t>(Option::kGo),
                                  static_cast<uint32_t>(OptionReply::kAck)))
          .bytes();
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendRaw(replies),  // one send: the client may close as soon as it reads the size
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"export size 9223372036854775808 exceeds INT64_MAX"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, ExportSizeOfTwoToThe64MinusOneThroughExportName) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendOptionReply(Option::kGo, OptionReply::kErrUnsup),
      ExpectOption(Option::kExportName),
      SendRaw(ByteBuilder().U64(~uint64_t{0}).U16(kFlagHasFlags).bytes()),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"export size 18446744073709551615 exceeds INT64_MAX"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, InfoExportOfTheWrongLength) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendOptionReply(Option::kGo, OptionReply::kInfo,
                      ByteBuilder().U16(0).U64(1 << 20).bytes()),  // flags missing
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal, {"NBD_INFO_EXPORT length must be 12"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, GoAcknowledgedWithoutInfoExport) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendOptionReply(Option::kGo, OptionReply::kAck),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kInternal,
                     {"server acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, RefusalCarriesTheServersMessage) {
  std::string text = "exports are closed for maintenance";
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendOptionReply(Option::kGo, OptionReply::kErrPolicy,
                      std::vector<uint8_t>(text.begin(), text.end())),
      ExpectClose(),
  });
  ExpectConnectFails(server, absl::StatusCode::kPermissionDenied,
                     {"NBD_OPT_GO failed with NBD_REP_ERR_POLICY", text});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, ServerClosesMidGreeting) {
  ScriptedServer server({SendRaw(ByteBuilder().Str("NBDMA").bytes()), Close()});
  ExpectConnectFails(server, absl::StatusCode::kUnavailable,
                     {"closed the connection during the handshake"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, ServerClosesInsteadOfAnsweringAnOption) {
  ScriptedServer server(
      {Greet(), ExpectClientFlags(), ExpectOption(Option::kStructuredReply), Close()});
  ExpectConnectFails(server, absl::StatusCode::kUnavailable,
                     {"closed the connection during the handshake"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, ServerResetsTheConnectionWithAnOptionUnread) {
  // Closing a Unix socket with unread data resets the connection: the client sees ECONNRESET
  // instead of the end of the stream.
  ScriptedServer server({Greet(), ExpectClientFlags(), Sleep(absl::Milliseconds(100)), Close()});
  ExpectConnectFails(server, absl::StatusCode::kUnavailable, {"during the handshake"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, ServerClosesMidOptionReply) {
  std::vector<uint8_t> reply = InfoExportReply(1 << 20, kFlagHasFlags);
  reply.resize(kOptionReplyHeaderSize + 5);  // header and half of the NBD_INFO_EXPORT payload
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendRaw(reply),
      Close(),
  });
  ExpectConnectFails(server, absl::StatusCode::kUnavailable,
                     {"closed the connection during the handshake"});
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, SilentServerHitsTheConnectTimeout) {
  ScriptedServer server({Stall()});
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(server, absl::Seconds(1));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kDeadlineExceeded) << client.status();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, StallAfterGoHitsTheConnectTimeout) {
  ScriptedServer server({Greet(), ExpectClientFlags(), HandleOptionsUntil(Option::kGo), Stall()});
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(server, absl::Seconds(1));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kDeadlineExceeded) << client.status();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

// --- Legal behaviour the client must accept -------------------------------------------------

TEST_F(HandshakeFaultTest, GoUnsupportedFallsBackToExportName) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntil(Option::kGo),
      SendOptionReply(Option::kGo, OptionReply::kErrUnsup),
      HandleOptionsUntilGo({.size = 7 << 20, .transmission_flags = kFlagHasFlags}),
      ExpectDisconnect(),
  });
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(server);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->size(), 7u << 20);
  EXPECT_EQ((*client)->export_info().transmission_flags, kFlagHasFlags);
  client->reset();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
  std::vector<RecordedOption> options = server.options();
  ASSERT_FALSE(options.empty());
  EXPECT_EQ(options.back().option, static_cast<uint32_t>(Option::kExportName));
}

TEST_F(HandshakeFaultTest, ExportNameReplyWithZeroPaddingWhenNoZeroesIsNotOffered) {
  ScriptedServer server({
      Greet(kFlagFixedNewstyle),  // no NBD_FLAG_NO_ZEROES: the reply carries 124 zero bytes
      ExpectClientFlags(kClientFlagFixedNewstyle),
      HandleOptionsUntil(Option::kGo),
      SendOptionReply(Option::kGo, OptionReply::kErrUnsup),
      HandleOptionsUntilGo({.size = 4096}),
      ExpectDisconnect(),
  });
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(server);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->size(), 4096u);
  client->reset();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, StructuredRepliesRefusedLeavesSimpleReplies) {
  ScriptedServer server({
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo({.structured_replies = false}),
      ExpectDisconnect(),
  });
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(server);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->export_info().reply_mode, ReplyMode::kSimple);
  client->reset();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

TEST_F(HandshakeFaultTest, HandshakeSentOneByteAtATime) {
  ScriptedServer server({
      Trickle(absl::Microseconds(50)),
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo({.size = 65536}),
      ExpectDisconnect(),
  });
  absl::StatusOr<std::unique_ptr<Client>> client = Connect(server);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ((*client)->size(), 65536u);
  client->reset();
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

}  // namespace
}  // namespace nbd::testing
