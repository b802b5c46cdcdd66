// Unit tests of nbd::Handshake: scripted server byte streams in, exact client bytes out.
//
// Every number on the wire is transcribed here from proto.md rather than taken from
// nbd/wire.h, so that a wrong constant there fails these tests. Every scenario is played three
// ways (the whole server stream in one Feed, one byte per Feed, exactly bytes_wanted() per
// Feed) and the outcomes must agree.
#include "nbd/handshake.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/byte_builder.h"

namespace nbd {
namespace {

using ::nbd::testing::ByteBuilder;
using ::testing::HasSubstr;
using Goal = HandshakeOptions::Goal;
using Tls = HandshakeOptions::Tls;
using Bytes = std::vector<uint8_t>;

// --- proto.md's numbers --------------------------------------------------------------------------
constexpr uint64_t kNbdMagic = 0x4e42444d41474943;      // "NBDMAGIC"
constexpr uint64_t kCliservMagic = 0x00420281861253;    // oldstyle
constexpr uint64_t kIhaveopt = 0x49484156454F5054;      // "IHAVEOPT"
constexpr uint64_t kReplyMagic = 0x3e889045565a9;       // option replies

constexpr uint16_t kServerFixedNewstyle = 1 << 0;
constexpr uint16_t kServerNoZeroes = 1 << 1;

constexpr uint32_t kOptExportName = 1;
constexpr uint32_t kOptAbort = 2;
constexpr uint32_t kOptList = 3;
constexpr uint32_t kOptStartTls = 5;
constexpr uint32_t kOptInfo = 6;
constexpr uint32_t kOptGo = 7;
constexpr uint32_t kOptStructuredReply = 8;
constexpr uint32_t kOptListMetaContext = 9;
constexpr uint32_t kOptSetMetaContext = 10;
constexpr uint32_t kOptExtendedHeaders = 11;

constexpr uint32_t kRepAck = 1;
constexpr uint32_t kRepServer = 2;
constexpr uint32_t kRepInfo = 3;
constexpr uint32_t kRepMetaContext = 4;
constexpr uint32_t kRepErrUnsup = 0x80000001;
constexpr uint32_t kRepErrPolicy = 0x80000002;
constexpr uint32_t kRepErrInvalid = 0x80000003;
constexpr uint32_t kRepErrPlatform = 0x80000004;
constexpr uint32_t kRepErrTlsReqd = 0x80000005;
constexpr uint32_t kRepErrUnknown = 0x80000006;
constexpr uint32_t kRepErrShutdown = 0x80000007;
constexpr uint32_t kRepErrBlockSizeReqd = 0x80000008;
constexpr uint32_t kRepErrTooBig = 0x80000009;
constexpr uint32_t kRepErrExtHeaderReqd = 0x8000000a;

constexpr uint16_t kInfoExport = 0;
constexpr uint16_t kInfoName = 1;
constexpr uint16_t kInfoDescription = 2;
constexpr uint16_t kInfoBlockSize = 3;

// Transmission flags of a typical writable export: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
// SEND_WRITE_ZEROES, SEND_DF, CAN_MULTI_CONN.
constexpr uint16_t kTypicalFlags = 0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0080 | 0x0100;
constexpr uint64_t kOneMebibyte = 1 << 20;

// --- Server messages -----------------------------------------------------------------------------
Bytes NewstyleGreeting(uint16_t handshake_flags) {
  return ByteBuilder().U64(kNbdMagic).U64(kIhaveopt).U16(handshake_flags);
}

Bytes OldstyleGreeting(uint64_t size, uint32_t flags) {
  return ByteBuilder().U64(kNbdMagic).U64(kCliservMagic).U64(size).U32(flags).Zeroes(124);
}

Bytes Reply(uint32_t option, uint32_t type, const Bytes& payload = {}) {
  return ByteBuilder()
      .U64(kReplyMagic)
      .U32(option)
      .U32(type)
      .U32(static_cast<uint32_t>(payload.size()))
      .Bytes(payload);
}

Bytes ErrorReply(uint32_t option, uint32_t type, absl::string_view message) {
  return Reply(option, type, ByteBuilder().Str(message));
}

Bytes InfoExport(uint32_t option, uint64_t size, uint16_t flags) {
  return Reply(option, kRepInfo, ByteBuilder().U16(kInfoExport).U64(size).U16(flags));
}

Bytes InfoString(uint32_t option, uint16_t type, absl::string_view text) {
  return Reply(option, kRepInfo, ByteBuilder().U16(type).Str(text));
}

Bytes InfoBlockSize(uint32_t option, uint32_t minimum, uint32_t preferred, uint32_t maximum) {
  return Reply(option, kRepInfo,
               ByteBuilder().U16(kInfoBlockSize).U32(minimum).U32(preferred).U32(maximum));
}

Bytes ServerEntry(absl::string_view name, absl::string_view description) {
  return Reply(kOptList, kRepServer,
               ByteBuilder().U32(static_cast<uint32_t>(name.size())).Str(name).Str(description));
}

Bytes MetaContextReply(uint32_t option, uint32_t id, absl::string_view name) {
  return Reply(option, kRepMetaContext, ByteBuilder().U32(id).Str(name));
}

// An NBD_OPT_EXPORT_NAME reply: size, flags and (without NO_ZEROES) 124 zero bytes.
Bytes ExportNameReply(uint64_t size, uint16_t flags, bool zeroes) {
  ByteBuilder reply;
  reply.U64(size).U16(flags);
  if (zeroes) reply.Zeroes(124);
  return reply;
}

// --- Client messages -----------------------------------------------------------------------------
Bytes ClientFlags(uint32_t flags) { return ByteBuilder().U32(flags); }

Bytes ClientOption(uint32_t option, const Bytes& data = {}) {
  return ByteBuilder()
      .U64(kIhaveopt)
      .U32(option)
      .U32(static_cast<uint32_t>(data.size()))
      .Bytes(data);
}

// NBD_OPT_GO / NBD_OPT_INFO data: name length, name, number of requests, each request.
Bytes ExportInfoRequest(uint32_t option, absl::string_view name,
                        const std::vector<uint16_t>& requests) {
  ByteBuilder data;
  data.U32(static_cast<uint32_t>(name.size())).Str(name);
  data.U16(static_cast<uint16_t>(requests.size()));
  for (uint16_t request : requests) data.U16(request);
  return ClientOption(option, data);
}

const std::vector<uint16_t> kDefaultInfoRequests = {kInfoName, kInfoDescription, kInfoBlockSize};

// NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT data: name, number of queries, each query.
Bytes MetaContextRequest(uint32_t option, absl::string_view name,
                         const std::vector<std::string>& queries) {
  ByteBuilder data;
  data.U32(static_cast<uint32_t>(name.size())).Str(name).U32(static_cast<uint32_t>(queries.size()));
  for (const std::string& query : queries) {
    data.U32(static_cast<uint32_t>(query.size())).Str(query);
  }
  return ClientOption(option, data);
}

Bytes Concat(std::initializer_list<Bytes> parts) {
  ByteBuilder all;
  for (const Bytes& part : parts) all.Bytes(part);
  return all;
}

// --- Driving the machine -------------------------------------------------------------------------
enum class Split { kWhole, kByteAtATime, kExactlyWanted };

const char* SplitName(Split split) {
  switch (split) {
    case Split::kWhole: return "whole stream";
    case Split::kByteAtATime: return "one byte at a time";
    case Split::kExactlyWanted: return "exactly bytes_wanted()";
  }
  return "?";
}

struct Outcome {
  absl::Status status;
  Handshake::State state = Handshake::State::kRunning;
  Bytes sent;
  size_t consumed = 0;  // server bytes the machine used (meaningful when status is OK)
  int tls_handshakes = 0;
  ExportInfo info;
  std::vector<ExportListing> exports;
  std::vector<std::string> listed_contexts;
  bool tls_active = false;

  // As a std::string, which gMock prints readably (absl::string_view is not std::string_view).
  std::string message() const { return std::string(status.message()); }

  std::string Summary() const {
    std::string text = absl::StrCat(
        "state=", static_cast<int>(state), " tls=", tls_active, " name=", info.name,
        " description=", info.description, " size=", info.size,
        " flags=", info.transmission_flags, " mode=", ReplyModeName(info.reply_mode),
        " oldstyle=", info.oldstyle, " block=", info.block_size.advertised, "/",
        info.block_size.minimum, "/", info.block_size.preferred, "/", info.block_size.maximum);
    for (const MetaContext& context : info.meta_contexts) {
      absl::StrAppend(&text, " context=", context.id, ":", context.name);
    }
    for (const ExportListing& listing : exports) {
      absl::StrAppend(&text, " export=", listing.name, ":", listing.description);
    }
    absl::StrAppend(&text, " listed=", absl::StrJoin(listed_contexts, ","));
    return text;
  }
};

// Plays `server` against a fresh machine. TLS "is established" as soon as it is asked for.
Outcome Play(const HandshakeOptions& options, const Bytes& server, Split split) {
  Handshake handshake(options);
  Outcome outcome;
  size_t offset = 0;
  auto collect_output = [&] {
    absl::Span<const uint8_t> output = handshake.output();
    outcome.sent.insert(outcome.sent.end(), output.begin(), output.end());
    handshake.ConsumeOutput(output.size());
  };
  while (true) {
    collect_output();
    if (handshake.state() == Handshake::State::kStartTls) {
      ++outcome.tls_handshakes;
      EXPECT_EQ(handshake.bytes_wanted(), 0u);
      handshake.TlsEstablished();
      continue;
    }
    if (handshake.state() != Handshake::State::kRunning) break;
    const size_t wanted = handshake.bytes_wanted();
    if (wanted == 0) {
      ADD_FAILURE() << "running but wants no bytes (" << SplitName(split) << ")";
      break;
    }
    if (offset == server.size()) break;  // end of stream: the I/O layer would report EOF
    const size_t remaining = server.size() - offset;
    size_t chunk = remaining;
    if (split == Split::kByteAtATime) chunk = 1;
    if (split == Split::kExactlyWanted) chunk = std::min(wanted, remaining);
    absl::StatusOr<size_t> consumed =
        handshake.Feed(absl::MakeConstSpan(server).subspan(offset, chunk));
    if (!consumed.ok()) {
      outcome.status = consumed.status();
      EXPECT_EQ(handshake.state(), Handshake::State::kFailed);
      break;
    }
    if (*consumed == 0 && handshake.state() == Handshake::State::kRunning) {
      ADD_FAILURE() << "Feed consumed nothing while running (" << SplitName(split) << ")";
      break;
    }
    offset += *consumed;
  }
  collect_output();
  outcome.state = handshake.state();
  outcome.consumed = offset;
  outcome.info = handshake.export_info();
  outcome.exports = handshake.exports();
  outcome.listed_contexts = handshake.listed_meta_contexts();
  outcome.tls_active = handshake.tls_active();
  return outcome;
}

// Plays the stream all three ways, checks they agree, and returns the byte-at-a-time outcome.
Outcome Negotiate(const HandshakeOptions& options, const Bytes& server) {
  Outcome by_byte = Play(options, server, Split::kByteAtATime);
  for (Split split : {Split::kWhole, Split::kExactlyWanted}) {
    Outcome other = Play(options, server, split);
    EXPECT_EQ(other.status, by_byte.status) << SplitName(split);
    EXPECT_EQ(other.state, by_byte.state) << SplitName(split);
    EXPECT_EQ(other.tls_handshakes, by_byte.tls_handshakes) << SplitName(split);
    EXPECT_EQ(other.Summary(), by_byte.Summary()) << SplitName(split);
    // A failing Feed reports no count and drops unsent output, so these compare on success.
    if (by_byte.status.ok()) {
      EXPECT_EQ(other.sent, by_byte.sent) << SplitName(split);
      EXPECT_EQ(other.consumed, by_byte.consumed) << SplitName(split);
    }
  }
  return by_byte;
}

HandshakeOptions Options(Goal goal = Goal::kTransmission, absl::string_view export_name = "disk") {
  HandshakeOptions options;
  options.goal = goal;
  options.export_name = std::string(export_name);
  return options;
}

// Bytes a server might send after the handshake; the machine must leave them alone.
const Bytes kAfterHandshake = {0x67, 0x44, 0x66, 0x98, 0xde, 0xad};

// The usual fixed newstyle server: structured replies, then GO with full information.
Bytes StructuredGoServer(uint64_t size = kOneMebibyte, uint16_t flags = kTypicalFlags) {
  return Concat({NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes),
                 Reply(kOptStructuredReply, kRepAck),
                 InfoExport(kOptGo, size, flags),
                 Reply(kOptGo, kRepAck)});
}

Bytes StructuredGoClient(absl::string_view name = "disk") {
  return Concat({ClientFlags(3), ClientOption(kOptStructuredReply),
                 ExportInfoRequest(kOptGo, name, kDefaultInfoRequests)});
}

// --- Oldstyle and plain newstyle -----------------------------------------------------------------
TEST(HandshakeTest, OldstyleGreetingEndsNegotiationAtOnce) {
  // The high 16 bits of the oldstyle flags are not transmission flags.
  const Bytes server =
      Concat({OldstyleGreeting(kOneMebibyte, 0x00030000 | 0x0003), kAfterHandshake});
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.state, Handshake::State::kDone);
  EXPECT_TRUE(outcome.sent.empty());  // the client says nothing in oldstyle
  EXPECT_EQ(outcome.consumed, 152u);
  EXPECT_TRUE(outcome.info.oldstyle);
  EXPECT_EQ(outcome.info.size, kOneMebibyte);
  EXPECT_EQ(outcome.info.transmission_flags, 0x0003);
  EXPECT_TRUE(outcome.info.read_only());
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kSimple);
  EXPECT_FALSE(outcome.info.block_size.advertised);
}

TEST(HandshakeTest, OldstyleCannotList) {
  Outcome outcome = Negotiate(Options(Goal::kList), OldstyleGreeting(kOneMebibyte, 1));
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(outcome.message(), HasSubstr("oldstyle negotiation"));
}

TEST(HandshakeTest, NewstyleWithoutFixedSendsOnlyExportNameAndReadsZeroes) {
  const Bytes server =
      Concat({NewstyleGreeting(0), ExportNameReply(kOneMebibyte, 0x0001, /*zeroes=*/true),
              kAfterHandshake});
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(0), ClientOption(kOptExportName, ByteBuilder().Str("disk"))}));
  EXPECT_EQ(outcome.consumed, 18u + 8 + 2 + 124);
  EXPECT_EQ(outcome.info.size, kOneMebibyte);
  EXPECT_EQ(outcome.info.transmission_flags, 0x0001);
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kSimple);
  EXPECT_FALSE(outcome.info.oldstyle);
}

TEST(HandshakeTest, NoZeroesOfferedIsAcceptedAndZeroesAreNotExpected) {
  const Bytes server = Concat({NewstyleGreeting(kServerNoZeroes),
                               ExportNameReply(4096, 0x0003, /*zeroes=*/false), kAfterHandshake});
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(2), ClientOption(kOptExportName, ByteBuilder().Str("disk"))}));
  EXPECT_EQ(outcome.consumed, 18u + 10);
  EXPECT_EQ(outcome.info.size, 4096u);
}

TEST(HandshakeTest, UnknownServerHandshakeFlagsAreIgnored) {
  // Bits 2..15 mean nothing yet; the client must not echo them.
  Outcome outcome = Negotiate(
      Options(), Concat({NewstyleGreeting(0xfffc), ExportNameReply(512, 1, /*zeroes=*/true)}));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(0), ClientOption(kOptExportName, ByteBuilder().Str("disk"))}));
}

TEST(HandshakeTest, NewstyleWithoutFixedCannotList) {
  Outcome outcome = Negotiate(Options(Goal::kList), NewstyleGreeting(kServerNoZeroes));
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(outcome.message(), HasSubstr("fixed newstyle"));
}

// --- Fixed newstyle: NBD_OPT_GO ------------------------------------------------------------------
TEST(HandshakeTest, GoWithStructuredRepliesAndFullInformation) {
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes),
      Reply(kOptStructuredReply, kRepAck),
      InfoString(kOptGo, kInfoName, "canonical-disk"),
      InfoString(kOptGo, kInfoDescription, "a test disk"),
      InfoBlockSize(kOptGo, 512, 4096, 32 << 20),
      InfoExport(kOptGo, kOneMebibyte, kTypicalFlags),
      Reply(kOptGo, kRepAck),
      kAfterHandshake,
  });
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.state, Handshake::State::kDone);
  EXPECT_EQ(outcome.sent, StructuredGoClient());
  EXPECT_EQ(outcome.consumed, server.size() - kAfterHandshake.size());
  const ExportInfo& info = outcome.info;
  EXPECT_EQ(info.name, "canonical-disk");
  EXPECT_EQ(info.description, "a test disk");
  EXPECT_EQ(info.size, kOneMebibyte);
  EXPECT_EQ(info.transmission_flags, kTypicalFlags);
  EXPECT_TRUE(info.can_flush() && info.can_fua() && info.can_trim() && info.can_zero() &&
              info.can_df() && info.can_multi_conn());
  EXPECT_FALSE(info.read_only());
  EXPECT_EQ(info.reply_mode, ReplyMode::kStructured);
  EXPECT_TRUE(info.block_size.advertised);
  EXPECT_EQ(info.block_size.minimum, 512u);
  EXPECT_EQ(info.block_size.preferred, 4096u);
  EXPECT_EQ(info.block_size.maximum, 32u << 20);
  EXPECT_TRUE(info.meta_contexts.empty());
}

TEST(HandshakeTest, BytesWantedIsExactlyTheNextMessage) {
  Handshake handshake(Options());
  EXPECT_EQ(handshake.bytes_wanted(), 16u);  // INIT_PASSWD + the second magic
  ASSERT_TRUE(handshake.Feed(ByteBuilder().U64(kNbdMagic).U64(kIhaveopt).bytes()).ok());
  EXPECT_EQ(handshake.bytes_wanted(), 2u);  // handshake flags
  EXPECT_TRUE(handshake.output().empty());
  ASSERT_TRUE(handshake.Feed(ByteBuilder().U16(3).bytes()).ok());
  EXPECT_EQ(handshake.bytes_wanted(), 20u);  // an option reply header
  const Bytes expected_output = Concat({ClientFlags(3), ClientOption(kOptStructuredReply)});
  EXPECT_EQ(Bytes(handshake.output().begin(), handshake.output().end()), expected_output);
  handshake.ConsumeOutput(5);  // a partial send leaves the rest queued
  EXPECT_EQ(handshake.output().size(), expected_output.size() - 5);
  handshake.ConsumeOutput(expected_output.size() - 5);
  EXPECT_TRUE(handshake.output().empty());
  ASSERT_TRUE(handshake.Feed(Reply(kOptStructuredReply, kRepAck)).ok());
  const Bytes name = InfoString(kOptGo, kInfoName, "disk");
  ASSERT_TRUE(handshake.Feed(absl::MakeConstSpan(name).first(20)).ok());
  EXPECT_EQ(handshake.bytes_wanted(), 6u);  // the NBD_REP_INFO payload: type + "disk"
  ASSERT_TRUE(handshake.Feed(absl::MakeConstSpan(name).subspan(20)).ok());
  EXPECT_EQ(handshake.bytes_wanted(), 20u);
}

TEST(HandshakeTest, GoWithoutBlockSizeRequestAsksForNameAndDescriptionOnly) {
  HandshakeOptions options = Options(Goal::kTransmission, "");
  options.request_block_size = false;
  Outcome outcome = Negotiate(options, StructuredGoServer());
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(3), ClientOption(kOptStructuredReply),
                    ExportInfoRequest(kOptGo, "", {kInfoName, kInfoDescription})}));
  EXPECT_EQ(outcome.info.name, "");
  EXPECT_FALSE(outcome.info.block_size.advertised);
  EXPECT_EQ(outcome.info.block_size.maximum, 32u << 20);  // the spec's default
}

TEST(HandshakeTest, UnknownInfoTypesAreIgnored) {
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
      Reply(kOptGo, kRepInfo, ByteBuilder().U16(42).Str("future information")),
      InfoExport(kOptGo, 8192, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.info.size, 8192u);
}

TEST(HandshakeTest, GoUnsupportedFallsBackToExportNameWithoutZeroes) {
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes),
      Reply(kOptStructuredReply, kRepErrUnsup),
      // Information sent before the refusal must not survive it.
      InfoString(kOptGo, kInfoDescription, "stale"),
      Reply(kOptGo, kRepErrUnsup),
      ExportNameReply(65536, 0x0003, /*zeroes=*/false),
      kAfterHandshake,
  });
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(3), ClientOption(kOptStructuredReply),
                    ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests),
                    ClientOption(kOptExportName, ByteBuilder().Str("disk"))}));
  EXPECT_EQ(outcome.consumed, server.size() - kAfterHandshake.size());
  EXPECT_EQ(outcome.info.size, 65536u);
  EXPECT_EQ(outcome.info.transmission_flags, 0x0003);
  EXPECT_EQ(outcome.info.description, "");
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kSimple);
}

TEST(HandshakeTest, GoUnsupportedFallsBackToExportNameWithZeroes) {
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle),
      Reply(kOptStructuredReply, kRepAck),
      Reply(kOptGo, kRepErrUnsup),
      ExportNameReply(65536, 0x0001, /*zeroes=*/true),
      kAfterHandshake,
  });
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent, Concat({ClientFlags(1), ClientOption(kOptStructuredReply),
                                  ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests),
                                  ClientOption(kOptExportName, ByteBuilder().Str("disk"))}));
  EXPECT_EQ(outcome.consumed, server.size() - kAfterHandshake.size());
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kStructured);
}

TEST(HandshakeTest, GoAcknowledgedWithoutExportInfoIsAnError) {
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
              InfoString(kOptGo, kInfoName, "disk"), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT"));
}

struct GoRefusal {
  uint32_t reply;
  absl::StatusCode code;
  const char* phrase;
};

class GoRefusalTest : public ::testing::TestWithParam<GoRefusal> {};

TEST_P(GoRefusalTest, NamesTheReplyAndCarriesTheServerMessage) {
  const GoRefusal& refusal = GetParam();
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
              ErrorReply(kOptGo, refusal.reply, "go away")});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_EQ(outcome.status.code(), refusal.code) << outcome.status;
  EXPECT_THAT(outcome.message(), HasSubstr("NBD_OPT_GO failed with"));
  EXPECT_THAT(outcome.message(), HasSubstr(refusal.phrase));
  EXPECT_THAT(outcome.message(), HasSubstr("server says: \"go away\""));
  EXPECT_EQ(outcome.state, Handshake::State::kFailed);
}

INSTANTIATE_TEST_SUITE_P(
    EveryErrorReply, GoRefusalTest,
    ::testing::Values(
        GoRefusal{kRepErrUnknown, absl::StatusCode::kNotFound,
                  "NBD_REP_ERR_UNKNOWN: export 'disk' is not available"},
        GoRefusal{kRepErrTlsReqd, absl::StatusCode::kFailedPrecondition,
                  "NBD_REP_ERR_TLS_REQD: the server requires TLS"},
        GoRefusal{kRepErrPolicy, absl::StatusCode::kPermissionDenied, "NBD_REP_ERR_POLICY"},
        GoRefusal{kRepErrInvalid, absl::StatusCode::kInvalidArgument, "NBD_REP_ERR_INVALID"},
        GoRefusal{kRepErrPlatform, absl::StatusCode::kUnimplemented, "NBD_REP_ERR_PLATFORM"},
        GoRefusal{kRepErrShutdown, absl::StatusCode::kUnavailable,
                  "NBD_REP_ERR_SHUTDOWN: the server is shutting down"},
        GoRefusal{kRepErrBlockSizeReqd, absl::StatusCode::kFailedPrecondition,
                  "NBD_REP_ERR_BLOCK_SIZE_REQD"},
        GoRefusal{kRepErrTooBig, absl::StatusCode::kResourceExhausted, "NBD_REP_ERR_TOO_BIG"},
        GoRefusal{kRepErrExtHeaderReqd, absl::StatusCode::kFailedPrecondition,
                  "NBD_REP_ERR_EXT_HEADER_REQD: the server requires extended headers"},
        GoRefusal{0x80000063, absl::StatusCode::kUnknown, "unknown reply type 0x80000063"}));

// --- Reply formats -------------------------------------------------------------------------------
TEST(HandshakeTest, StructuredRepliesRefusedStaysSimpleAndSkipsMetaContexts) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"base:allocation"};
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes),
              ErrorReply(kOptStructuredReply, kRepErrUnsup, "too old"),
              InfoExport(kOptGo, kOneMebibyte, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent, StructuredGoClient());  // no NBD_OPT_SET_META_CONTEXT
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kSimple);
  EXPECT_TRUE(outcome.info.meta_contexts.empty());
}

TEST(HandshakeTest, StructuredRepliesNotRequestedSendsOnlyGo) {
  HandshakeOptions options = Options();
  options.structured_replies = false;
  options.extended_headers = true;  // ignored without structured replies
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               InfoExport(kOptGo, 512, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(1), ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests)}));
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kSimple);
}

TEST(HandshakeTest, UnknownErrorReplyToStructuredReplyIsARefusal) {
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, 0x80000050),
              InfoExport(kOptGo, 512, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kSimple);
}

TEST(HandshakeTest, ExtendedHeadersAcceptedSkipsStructuredReply) {
  HandshakeOptions options = Options();
  options.extended_headers = true;
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptExtendedHeaders, kRepAck),
              InfoExport(kOptGo, kOneMebibyte, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(1), ClientOption(kOptExtendedHeaders),
                    ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests)}));
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kExtended);
  EXPECT_TRUE(outcome.info.extended_headers());
  EXPECT_TRUE(outcome.info.structured_replies());
}

TEST(HandshakeTest, ExtendedHeadersRefusedFallsBackToStructuredReplies) {
  HandshakeOptions options = Options();
  options.extended_headers = true;
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle),
              ErrorReply(kOptExtendedHeaders, kRepErrUnsup, "unknown option 11"),
              Reply(kOptStructuredReply, kRepAck), InfoExport(kOptGo, kOneMebibyte, 1),
              Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(1), ClientOption(kOptExtendedHeaders),
                    ClientOption(kOptStructuredReply),
                    ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests)}));
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kStructured);
}

TEST(HandshakeTest, ExtendedHeadersThenGoUnsupportedCannotUseExportName) {
  HandshakeOptions options = Options();
  options.extended_headers = true;
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptExtendedHeaders, kRepAck),
              Reply(kOptGo, kRepErrUnsup)});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_OPT_EXPORT_NAME cannot be used with extended headers"));
}

TEST(HandshakeTest, ShutdownInReplyToStructuredReplyIsFatal) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               ErrorReply(kOptStructuredReply, kRepErrShutdown, "bye")});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_OPT_STRUCTURED_REPLY failed with NBD_REP_ERR_SHUTDOWN"));
}

TEST(HandshakeTest, TlsRequiredInReplyToStructuredReplyIsFatal) {
  // proto.md: TLS_REQD to anything but INFO/GO means no option will succeed without TLS.
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepErrTlsReqd)});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(outcome.message(), HasSubstr("requires TLS"));
}

// --- Meta contexts -------------------------------------------------------------------------------
TEST(HandshakeTest, SetMetaContextCollectsIdsAndNames) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"base:allocation", "qemu:dirty-bitmap:x"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes),
      Reply(kOptStructuredReply, kRepAck),
      MetaContextReply(kOptSetMetaContext, 7, "qemu:dirty-bitmap:x"),
      MetaContextReply(kOptSetMetaContext, 3, "base:allocation"),
      Reply(kOptSetMetaContext, kRepAck),
      InfoExport(kOptGo, kOneMebibyte, kTypicalFlags),
      Reply(kOptGo, kRepAck),
  });
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(3), ClientOption(kOptStructuredReply),
                    MetaContextRequest(kOptSetMetaContext, "disk",
                                       {"base:allocation", "qemu:dirty-bitmap:x"}),
                    ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests)}));
  ASSERT_EQ(outcome.info.meta_contexts.size(), 2u);
  const MetaContext* allocation = outcome.info.FindMetaContext("base:allocation");
  ASSERT_NE(allocation, nullptr);
  EXPECT_EQ(allocation->id, 3u);
  const MetaContext* bitmap = outcome.info.FindMetaContext("qemu:dirty-bitmap:x");
  ASSERT_NE(bitmap, nullptr);
  EXPECT_EQ(bitmap->id, 7u);
}

TEST(HandshakeTest, SetMetaContextRefusedLeavesNoContextsButConnects) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"base:allocation"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
      // Contexts sent before an error are void (proto.md).
      MetaContextReply(kOptSetMetaContext, 1, "base:allocation"),
      ErrorReply(kOptSetMetaContext, kRepErrInvalid, "no"),
      InfoExport(kOptGo, kOneMebibyte, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_TRUE(outcome.info.meta_contexts.empty());
  EXPECT_EQ(outcome.state, Handshake::State::kDone);
}

TEST(HandshakeTest, SetMetaContextWithDuplicateIdsIsAnError) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"base:allocation", "qemu:dirty-bitmap:x"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
      MetaContextReply(kOptSetMetaContext, 1, "base:allocation"),
      MetaContextReply(kOptSetMetaContext, 1, "qemu:dirty-bitmap:x")});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("id 1 to 'qemu:dirty-bitmap:x' after id 1 to 'base:allocation'"));
}

TEST(HandshakeTest, SetMetaContextSelectingTheSameNameTwiceIsAnError) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"base:allocation"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
      MetaContextReply(kOptSetMetaContext, 1, "base:allocation"),
      MetaContextReply(kOptSetMetaContext, 2, "base:allocation")});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("id 2 to 'base:allocation' after id 1 to 'base:allocation'"));
}

// Found by handshake_fuzzer: a server answering one query with three contexts made the client
// report contexts it never asked for, which block status would then decode as if it had.
TEST(HandshakeTest, SetMetaContextSelectingAContextNoQueryAskedForIsAnError) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"base:allocation"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
      MetaContextReply(kOptSetMetaContext, 1, "base:allocation"),
      MetaContextReply(kOptSetMetaContext, 2, "qemu:dirty-bitmap:bitmap0")});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("server selected 'qemu:dirty-bitmap:bitmap0', which no query asked for"));
}

TEST(HandshakeTest, SetMetaContextNamespaceQuerySelectsEveryContextInIt) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"qemu:dirty-bitmap:"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes),
      Reply(kOptStructuredReply, kRepAck),
      MetaContextReply(kOptSetMetaContext, 4, "qemu:dirty-bitmap:a"),
      MetaContextReply(kOptSetMetaContext, 5, "qemu:dirty-bitmap:b"),
      Reply(kOptSetMetaContext, kRepAck),
      InfoExport(kOptGo, kOneMebibyte, kTypicalFlags),
      Reply(kOptGo, kRepAck),
  });
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  ASSERT_EQ(outcome.info.meta_contexts.size(), 2u);
  ASSERT_NE(outcome.info.FindMetaContext("qemu:dirty-bitmap:b"), nullptr);
  EXPECT_EQ(outcome.info.FindMetaContext("qemu:dirty-bitmap:b")->id, 5u);
}

TEST(HandshakeTest, MetaContextReplyShorterThanItsIdIsAnError) {
  HandshakeOptions options = Options();
  options.meta_contexts = {"base:allocation"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
      Reply(kOptSetMetaContext, kRepMetaContext, ByteBuilder().U16(1))});
  Outcome outcome = Negotiate(options, server);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_REP_META_CONTEXT reply to NBD_OPT_SET_META_CONTEXT must be at "
                        "least 4 bytes, got 2"));
}

TEST(HandshakeTest, ListMetaContextsThenAbort) {
  HandshakeOptions options = Options(Goal::kListMetaContexts);
  options.structured_replies = false;  // the goal needs them anyway
  options.meta_contexts = {"base:", "qemu:"};
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle),
      Reply(kOptStructuredReply, kRepAck),
      MetaContextReply(kOptListMetaContext, 0, "base:allocation"),
      MetaContextReply(kOptListMetaContext, 0, "qemu:dirty-bitmap:b0"),
      Reply(kOptListMetaContext, kRepAck),
      Reply(kOptAbort, kRepAck),  // the machine need not wait for this
  });
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.state, Handshake::State::kDone);
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(1), ClientOption(kOptStructuredReply),
                    MetaContextRequest(kOptListMetaContext, "disk", {"base:", "qemu:"}),
                    ClientOption(kOptAbort)}));
  EXPECT_EQ(outcome.consumed, server.size() - 20);
  EXPECT_THAT(outcome.listed_contexts,
              ::testing::ElementsAre("base:allocation", "qemu:dirty-bitmap:b0"));
}

TEST(HandshakeTest, ListMetaContextsNeedsStructuredReplies) {
  HandshakeOptions options = Options(Goal::kListMetaContexts);
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepErrUnsup)});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(outcome.message(), HasSubstr("cannot list meta contexts"));
}

TEST(HandshakeTest, ListMetaContextsRefusedIsAnError) {
  HandshakeOptions options = Options(Goal::kListMetaContexts);
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               MetaContextReply(kOptListMetaContext, 0, "base:allocation"),
                               ErrorReply(kOptListMetaContext, kRepErrTooBig, "too many")});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_OPT_LIST_META_CONTEXT failed with NBD_REP_ERR_TOO_BIG"));
  EXPECT_TRUE(outcome.listed_contexts.empty());
}

// --- NBD_OPT_LIST and NBD_OPT_INFO ---------------------------------------------------------------
TEST(HandshakeTest, ListCollectsEveryExportThenAborts) {
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes),
      ServerEntry("", ""),
      ServerEntry("disk", "the main disk"),
      ServerEntry("backup", ""),
      Reply(kOptList, kRepAck),
  });
  Outcome outcome = Negotiate(Options(Goal::kList), Concat({server, Reply(kOptAbort, kRepAck)}));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.state, Handshake::State::kDone);
  // NBD_OPT_LIST needs no reply format, so nothing else is negotiated.
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(3), ClientOption(kOptList), ClientOption(kOptAbort)}));
  EXPECT_EQ(outcome.consumed, server.size());
  ASSERT_EQ(outcome.exports.size(), 3u);
  EXPECT_EQ(outcome.exports[0].name, "");
  EXPECT_EQ(outcome.exports[1].name, "disk");
  EXPECT_EQ(outcome.exports[1].description, "the main disk");
  EXPECT_EQ(outcome.exports[2].name, "backup");
  EXPECT_EQ(outcome.exports[2].description, "");
}

TEST(HandshakeTest, ListRefusedByPolicy) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               ErrorReply(kOptList, kRepErrPolicy, "listing is disabled")});
  Outcome outcome = Negotiate(Options(Goal::kList), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_OPT_LIST failed with NBD_REP_ERR_POLICY"));
  EXPECT_THAT(outcome.message(), HasSubstr("listing is disabled"));
}

TEST(HandshakeTest, ServerEntryNameLongerThanItsReplyIsAnError) {
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle),
              Reply(kOptList, kRepServer, ByteBuilder().U32(10).Str("disk"))});
  Outcome outcome = Negotiate(Options(Goal::kList), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_REP_SERVER name length 10 exceeds the 4 bytes left in the reply"));
}

TEST(HandshakeTest, InfoReportsTheExportThenAborts) {
  HandshakeOptions options = Options(Goal::kInfo, "alias");
  const Bytes server = Concat({
      NewstyleGreeting(kServerFixedNewstyle),
      Reply(kOptStructuredReply, kRepAck),
      InfoExport(kOptInfo, 3 * kOneMebibyte, 0x0003),
      InfoString(kOptInfo, kInfoName, "real-name"),
      Reply(kOptInfo, kRepAck),
  });
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.state, Handshake::State::kDone);
  EXPECT_EQ(outcome.sent,
            Concat({ClientFlags(1), ClientOption(kOptStructuredReply),
                    ExportInfoRequest(kOptInfo, "alias", kDefaultInfoRequests),
                    ClientOption(kOptAbort)}));
  EXPECT_EQ(outcome.info.name, "real-name");
  EXPECT_EQ(outcome.info.size, 3 * kOneMebibyte);
  EXPECT_TRUE(outcome.info.read_only());
}

TEST(HandshakeTest, InfoUnsupportedHasNoFallback) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               Reply(kOptInfo, kRepErrUnsup)});
  Outcome outcome = Negotiate(Options(Goal::kInfo), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(outcome.message(), HasSubstr("the server does not support NBD_OPT_INFO"));
}

// --- STARTTLS ------------------------------------------------------------------------------------
TEST(HandshakeTest, StartTlsStopsForTheTlsHandshakeThenContinues) {
  HandshakeOptions options = Options();
  options.tls = Tls::kRequire;
  Handshake handshake(options);
  ASSERT_TRUE(handshake.Feed(NewstyleGreeting(kServerFixedNewstyle | kServerNoZeroes)).ok());
  EXPECT_EQ(Bytes(handshake.output().begin(), handshake.output().end()),
            Concat({ClientFlags(3), ClientOption(kOptStartTls)}));
  handshake.ConsumeOutput(handshake.output().size());
  // The ACK is followed by the server's first TLS record, which is not the machine's to read.
  const Bytes ack_and_tls = Concat({Reply(kOptStartTls, kRepAck), {0x16, 0x03, 0x01}});
  absl::StatusOr<size_t> consumed = handshake.Feed(ack_and_tls);
  ASSERT_TRUE(consumed.ok()) << consumed.status();
  EXPECT_EQ(*consumed, 20u);
  EXPECT_EQ(handshake.state(), Handshake::State::kStartTls);
  EXPECT_EQ(handshake.bytes_wanted(), 0u);
  EXPECT_TRUE(handshake.output().empty());
  EXPECT_EQ(*handshake.Feed(ByteBuilder().U8(0x16).bytes()), 0u);
  EXPECT_FALSE(handshake.tls_active());

  handshake.TlsEstablished();
  EXPECT_EQ(handshake.state(), Handshake::State::kRunning);
  EXPECT_TRUE(handshake.tls_active());
  EXPECT_EQ(handshake.bytes_wanted(), 20u);
  EXPECT_EQ(Bytes(handshake.output().begin(), handshake.output().end()),
            ClientOption(kOptStructuredReply));
}

TEST(HandshakeTest, StartTlsAcceptedThenNegotiatesEverythingElse) {
  HandshakeOptions options = Options();
  options.tls = Tls::kAllow;
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStartTls, kRepAck), Reply(kOptStructuredReply, kRepAck),
                               InfoExport(kOptGo, kOneMebibyte, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.tls_handshakes, 1);
  EXPECT_TRUE(outcome.tls_active);
  EXPECT_EQ(outcome.sent, Concat({ClientFlags(1), ClientOption(kOptStartTls),
                                  ClientOption(kOptStructuredReply),
                                  ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests)}));
  EXPECT_EQ(outcome.info.reply_mode, ReplyMode::kStructured);
}

TEST(HandshakeTest, StartTlsRefusedWhenRequiredIsFatal) {
  HandshakeOptions options = Options();
  options.tls = Tls::kRequire;
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               ErrorReply(kOptStartTls, kRepErrPolicy, "no certificates")});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(outcome.message(),
              HasSubstr("TLS is required but NBD_OPT_STARTTLS failed with NBD_REP_ERR_POLICY"));
  EXPECT_THAT(outcome.message(), HasSubstr("no certificates"));
  EXPECT_EQ(outcome.sent, Concat({ClientFlags(1), ClientOption(kOptStartTls)}));
  EXPECT_EQ(outcome.tls_handshakes, 0);
}

TEST(HandshakeTest, StartTlsRefusedWhenAllowedContinuesInPlainText) {
  HandshakeOptions options = Options();
  options.tls = Tls::kAllow;
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStartTls, kRepErrUnsup),
                               Reply(kOptStructuredReply, kRepAck),
                               InfoExport(kOptGo, kOneMebibyte, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_FALSE(outcome.tls_active);
  EXPECT_EQ(outcome.tls_handshakes, 0);
  EXPECT_EQ(outcome.sent, Concat({ClientFlags(1), ClientOption(kOptStartTls),
                                  ClientOption(kOptStructuredReply),
                                  ExportInfoRequest(kOptGo, "disk", kDefaultInfoRequests)}));
}

TEST(HandshakeTest, TlsRequiredButServerIsNotFixedNewstyle) {
  HandshakeOptions options = Options();
  options.tls = Tls::kRequire;
  Outcome outcome = Negotiate(options, NewstyleGreeting(0));
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(outcome.message(), HasSubstr("TLS is required"));
  EXPECT_TRUE(outcome.sent.empty());
}

// --- Malformed servers and caps ------------------------------------------------------------------
TEST(HandshakeTest, WrongInitPasswdIsRejected) {
  Outcome outcome = Negotiate(Options(), ByteBuilder().Str("HTTP/1.1 400 Bad"));
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(), HasSubstr("instead of NBDMAGIC"));
}

TEST(HandshakeTest, WrongSecondMagicIsRejected) {
  Outcome outcome = Negotiate(Options(), ByteBuilder().U64(kNbdMagic).U64(0x1234).U16(1));
  EXPECT_THAT(outcome.message(),
              HasSubstr("server greeting magic 0x1234 is neither IHAVEOPT"));
}

TEST(HandshakeTest, WrongOptionReplyMagicIsRejected) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               ByteBuilder().U64(kReplyMagic + 1).U32(kOptStructuredReply)
                                   .U32(kRepAck).U32(0)});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("option reply magic is 0x3e889045565aa, expected 0x3e889045565a9"));
}

TEST(HandshakeTest, ReplyToAnotherOptionIsRejected) {
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_THAT(outcome.message(),
              HasSubstr("server sent NBD_REP_ACK for NBD_OPT_GO while "
                        "NBD_OPT_STRUCTURED_REPLY was pending"));
}

TEST(HandshakeTest, OversizedReplyIsRejectedFromItsHeader) {
  HandshakeOptions options = Options();
  options.max_option_reply_bytes = 1024;
  // Only the header is sent: the length alone must fail the handshake.
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               ByteBuilder().U64(kReplyMagic).U32(kOptGo).U32(kRepInfo)
                                   .U32(1025)});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_REP_INFO to NBD_OPT_GO is 1025 bytes, more than the limit of 1024"));
}

TEST(HandshakeTest, HugeReplyLengthIsRejectedWithDefaultCap) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               ByteBuilder().U64(kReplyMagic).U32(kOptStructuredReply)
                                   .U32(kRepErrUnsup).U32(0xffffffff)});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_THAT(outcome.message(), HasSubstr("4294967295 bytes"));
}

TEST(HandshakeTest, TooManyRepliesToOneOptionIsRejected) {
  HandshakeOptions options = Options(Goal::kList);
  options.max_replies_per_option = 3;
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle), ServerEntry("a", ""),
                               ServerEntry("b", ""), ServerEntry("c", ""),
                               Reply(kOptList, kRepAck)});
  Outcome outcome = Negotiate(options, server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(),
              HasSubstr("server sent more than 3 replies to NBD_OPT_LIST"));
}

TEST(HandshakeTest, UnknownNonErrorReplyTypeIsFatal) {
  const Bytes server =
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, 99)});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_THAT(outcome.message(),
              HasSubstr("unexpected unknown reply type 0x63 in reply to NBD_OPT_STRUCTURED_REPLY"));
}

TEST(HandshakeTest, KnownReplyTypeToTheWrongOptionIsFatal) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               Reply(kOptGo, kRepServer, ByteBuilder().U32(1).Str("x"))});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_THAT(outcome.message(),
              HasSubstr("unexpected NBD_REP_SERVER in reply to NBD_OPT_GO"));
}

TEST(HandshakeTest, AckWithDataIsFatal) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck, ByteBuilder().U8(0))});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_THAT(outcome.message(),
              HasSubstr("NBD_REP_ACK to NBD_OPT_STRUCTURED_REPLY must carry no data, got 1"));
}

TEST(HandshakeTest, InfoExportWithWrongLengthIsFatal) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               Reply(kOptGo, kRepInfo, ByteBuilder().U16(kInfoExport).U64(512))});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_THAT(outcome.message(), HasSubstr("NBD_INFO_EXPORT length must be 12, got 10"));
}

TEST(HandshakeTest, InfoNameLongerThanTheStringLimitIsFatal) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               InfoString(kOptGo, kInfoName, std::string(4097, 'n'))});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_THAT(outcome.message(), HasSubstr("NBD_INFO_NAME is 4097 bytes"));
}

TEST(HandshakeTest, ExportSizesAboveInt64MaxAreRejectedEverywhere) {
  constexpr uint64_t kTooBig = uint64_t{1} << 63;
  const std::vector<Bytes> servers = {
      OldstyleGreeting(kTooBig, 1),
      Concat({NewstyleGreeting(0), ExportNameReply(kTooBig, 1, /*zeroes=*/true)}),
      Concat({NewstyleGreeting(kServerFixedNewstyle), Reply(kOptStructuredReply, kRepAck),
              InfoExport(kOptGo, kTooBig, 1)}),
  };
  for (const Bytes& server : servers) {
    Outcome outcome = Negotiate(Options(), server);
    EXPECT_THAT(outcome.message(),
                HasSubstr("export size 9223372036854775808 exceeds INT64_MAX"));
  }
  Outcome largest = Negotiate(Options(), OldstyleGreeting(kTooBig - 1, 1));
  ASSERT_TRUE(largest.status.ok()) << largest.status;
  EXPECT_EQ(largest.info.size, kTooBig - 1);
}

struct BadBlockSize {
  Bytes info_payload;  // NBD_REP_INFO payload, type included
  uint64_t export_size;
  const char* phrase;
};

class BlockSizeTest : public ::testing::TestWithParam<BadBlockSize> {};

TEST_P(BlockSizeTest, ViolationsOfTheSpecAreFatal) {
  const BadBlockSize& bad = GetParam();
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               Reply(kOptGo, kRepInfo, bad.info_payload),
                               InfoExport(kOptGo, bad.export_size, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(Options(), server);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(outcome.message(), HasSubstr(bad.phrase));
}

Bytes BlockSizePayload(uint32_t minimum, uint32_t preferred, uint32_t maximum) {
  return ByteBuilder().U16(kInfoBlockSize).U32(minimum).U32(preferred).U32(maximum);
}

INSTANTIATE_TEST_SUITE_P(
    EveryRule, BlockSizeTest,
    ::testing::Values(
        BadBlockSize{BlockSizePayload(3, 4096, 65536), kOneMebibyte,
                     "minimum block size 3 must be a power of 2 no larger than 65536"},
        BadBlockSize{BlockSizePayload(131072, 131072, 131072), kOneMebibyte,
                     "minimum block size 131072 must be a power of 2 no larger than 65536"},
        BadBlockSize{BlockSizePayload(1, 256, 65536), kOneMebibyte,
                     "preferred block size 256 must be a power of 2 of at least 512"},
        BadBlockSize{BlockSizePayload(4096, 2048, 65536), kOneMebibyte,
                     "preferred block size 2048 must be a power of 2 of at least 4096"},
        BadBlockSize{BlockSizePayload(512, 3000, 65536), kOneMebibyte,
                     "preferred block size 3000"},
        BadBlockSize{BlockSizePayload(512, 4096, 1000), kOneMebibyte,
                     "maximum block size 1000 must be 0xffffffff or a nonzero multiple of the "
                     "minimum block size 512"},
        BadBlockSize{BlockSizePayload(512, 4096, 0), kOneMebibyte, "maximum block size 0"},
        BadBlockSize{BlockSizePayload(512, 4096, 1024), kOneMebibyte,
                     "maximum block size 1024 is smaller than both the preferred block size "
                     "4096 and the export size 1048576"},
        BadBlockSize{ByteBuilder().U16(kInfoBlockSize).U32(512).U32(4096).U16(0), kOneMebibyte,
                     "NBD_INFO_BLOCK_SIZE length must be 14, got 12"}));

TEST(HandshakeTest, BlockSizeMaximumMayBeBelowPreferredForASmallExport) {
  // proto.md: the maximum must reach the smaller of the preferred size and the export size.
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               InfoBlockSize(kOptGo, 512, 4096, 1024),
                               InfoExport(kOptGo, 1024, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.info.block_size.maximum, 1024u);
}

TEST(HandshakeTest, BlockSizeWithoutInherentMaximumIsAccepted) {
  const Bytes server = Concat({NewstyleGreeting(kServerFixedNewstyle),
                               Reply(kOptStructuredReply, kRepAck),
                               InfoBlockSize(kOptGo, 1, 512, 0xffffffff),
                               InfoExport(kOptGo, kOneMebibyte, 1), Reply(kOptGo, kRepAck)});
  Outcome outcome = Negotiate(Options(), server);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.info.block_size.minimum, 1u);
  EXPECT_EQ(outcome.info.block_size.maximum, 0xffffffffu);
}

// --- Feeding rules and client-side limits --------------------------------------------------------
TEST(HandshakeTest, TruncatedStreamsOnlyWaitForMoreBytes) {
  const Bytes server = StructuredGoServer();
  for (size_t length = 0; length < server.size(); ++length) {
    Handshake handshake(Options());
    absl::StatusOr<size_t> consumed =
        handshake.Feed(absl::MakeConstSpan(server).first(length));
    ASSERT_TRUE(consumed.ok()) << "prefix " << length << ": " << consumed.status();
    EXPECT_EQ(*consumed, length);
    EXPECT_EQ(handshake.state(), Handshake::State::kRunning) << "prefix " << length;
    EXPECT_GT(handshake.bytes_wanted(), 0u) << "prefix " << length;
  }
}

TEST(HandshakeTest, FeedAfterDoneConsumesNothing) {
  Handshake handshake(Options());
  ASSERT_TRUE(handshake.Feed(StructuredGoServer()).ok());
  ASSERT_EQ(handshake.state(), Handshake::State::kDone);
  EXPECT_EQ(handshake.bytes_wanted(), 0u);
  absl::StatusOr<size_t> consumed = handshake.Feed(kAfterHandshake);
  ASSERT_TRUE(consumed.ok());
  EXPECT_EQ(*consumed, 0u);
}

TEST(HandshakeTest, FeedAfterFailureRepeatsTheError) {
  Handshake handshake(Options());
  absl::StatusOr<size_t> first = handshake.Feed(ByteBuilder().Zeroes(16).bytes());
  ASSERT_FALSE(first.ok());
  absl::StatusOr<size_t> second = handshake.Feed(NewstyleGreeting(1));
  EXPECT_EQ(second.status(), first.status());
  EXPECT_EQ(handshake.state(), Handshake::State::kFailed);
  EXPECT_EQ(handshake.bytes_wanted(), 0u);
}

TEST(HandshakeTest, ExportNameLongerThanTheProtocolAllowsFailsAtFirstFeed) {
  Outcome outcome = Negotiate(Options(Goal::kTransmission, std::string(4097, 'x')),
                              NewstyleGreeting(kServerFixedNewstyle));
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(outcome.message(),
              HasSubstr("export name is 4097 bytes; the protocol allows at most 4096"));
  EXPECT_TRUE(outcome.sent.empty());
}

}  // namespace
}  // namespace nbd
