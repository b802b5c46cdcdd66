// Tests for nbd::ReplyParser: byte streams written field by field as proto.md lists them
// (simple reply, structured chunk, 32-byte extended header), fed whole, split at every point
// and byte by byte, against a fake table of requests in flight.
#include "nbd/reply_parser.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/errors.h"
#include "nbd/wire.h"
#include "tests/testing/byte_builder.h"

// Counts heap allocations while `g_count_allocations` is set, to prove the steady state of
// the parser allocates nothing.
namespace {
std::atomic<bool> g_count_allocations{false};
std::atomic<size_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  if (g_count_allocations.load(std::memory_order_relaxed)) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
  }
  void* memory = std::malloc(size == 0 ? 1 : size);
  if (memory == nullptr) throw std::bad_alloc();
  return memory;
}
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t) noexcept { std::free(memory); }

namespace nbd {
namespace {

using ::nbd::testing::ByteBuilder;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Kind = ReplyEvent::Kind;
using Bytes = std::vector<uint8_t>;

constexpr uint16_t kDone = kReplyFlagDone;
constexpr uint16_t kNoFlags = 0;

uint16_t Type(ReplyType type) { return static_cast<uint16_t>(type); }

// --- Message builders, fields in proto.md order -------------------------------------------

Bytes SimpleReply(uint32_t error, uint64_t cookie, absl::string_view payload = "") {
  return ByteBuilder().U32(kSimpleReplyMagic).U32(error).U64(cookie).Str(payload);
}

Bytes Chunk(uint16_t flags, uint16_t type, uint64_t cookie, const Bytes& payload) {
  return ByteBuilder()
      .U32(kStructuredReplyMagic)
      .U16(flags)
      .U16(type)
      .U64(cookie)
      .U32(static_cast<uint32_t>(payload.size()))
      .Bytes(payload);
}

Bytes ExtendedChunk(uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset,
                    const Bytes& payload) {
  return ByteBuilder()
      .U32(kExtendedReplyMagic)
      .U16(flags)
      .U16(type)
      .U64(cookie)
      .U64(offset)
      .U64(payload.size())
      .Bytes(payload);
}

Bytes DataPayload(uint64_t offset, absl::string_view data) {
  return ByteBuilder().U64(offset).Str(data);
}
Bytes HolePayload(uint64_t offset, uint32_t size) { return ByteBuilder().U64(offset).U32(size); }
Bytes ErrorPayload(uint32_t error, absl::string_view message) {
  return ByteBuilder().U32(error).U16(static_cast<uint16_t>(message.size())).Str(message);
}
Bytes ErrorOffsetPayload(uint32_t error, absl::string_view message, uint64_t offset) {
  return ByteBuilder().Bytes(ErrorPayload(error, message)).U64(offset);
}
Bytes BlockStatusPayload(uint32_t context_id, const std::vector<Extent>& extents) {
  ByteBuilder builder;
  builder.U32(context_id);
  for (const Extent& extent : extents) {
    builder.U32(static_cast<uint32_t>(extent.length)).U32(static_cast<uint32_t>(extent.flags));
  }
  return builder;
}
Bytes BlockStatusExtPayload(uint32_t context_id, const std::vector<Extent>& extents) {
  ByteBuilder builder;
  builder.U32(context_id).U32(static_cast<uint32_t>(extents.size()));
  for (const Extent& extent : extents) builder.U64(extent.length).U64(extent.flags);
  return builder;
}

Bytes Concat(std::initializer_list<Bytes> parts) {
  Bytes all;
  for (const Bytes& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

// --- The caller's side ----------------------------------------------------------------------

class FakeLookup : public RequestLookup {
 public:
  InflightRequest* Find(uint64_t cookie) override {
    auto it = requests_.find(cookie);
    return it == requests_.end() ? nullptr : &it->second;
  }
  InflightRequest& Add(uint64_t cookie, Command command, uint64_t offset, uint64_t length,
                       uint16_t flags = 0) {
    InflightRequest& request = requests_[cookie];
    request.command = command;
    request.offset = offset;
    request.length = length;
    request.flags = flags;
    request.progress.Reset();
    return request;
  }
  void Remove(uint64_t cookie) { requests_.erase(cookie); }

 private:
  std::map<uint64_t, InflightRequest> requests_;
};

// An event copied out of the parser, with read data owned (adjacent pieces merged).
struct Recorded {
  Kind kind = Kind::kNone;
  uint64_t cookie = 0;
  uint64_t buffer_offset = 0;
  uint64_t length = 0;
  std::string data;
  uint32_t context_id = 0;
  std::vector<Extent> extents;
  absl::Status status;
};

std::string Describe(const Recorded& event) {
  switch (event.kind) {
    case Kind::kReadData:
      return absl::StrCat("data cookie=", event.cookie, " at=", event.buffer_offset, " \"",
                          event.data, "\"");
    case Kind::kReadHole:
      return absl::StrCat("hole cookie=", event.cookie, " at=", event.buffer_offset,
                          " length=", event.length);
    case Kind::kBlockStatus: {
      std::string text =
          absl::StrCat("status cookie=", event.cookie, " context=", event.context_id);
      for (const Extent& extent : event.extents) {
        absl::StrAppend(&text, " ", extent.length, "/", extent.flags);
      }
      return text;
    }
    case Kind::kDone:
      return absl::StrCat("done cookie=", event.cookie, " ", event.status.ToString());
    case Kind::kNone:
      break;
  }
  return "none";
}

struct ParseResult {
  absl::Status fatal;
  std::vector<Recorded> events;

  std::vector<std::string> Descriptions() const {
    std::vector<std::string> out;
    for (const Recorded& event : events) out.push_back(Describe(event));
    return out;
  }
  // The kDone status of `cookie`; a NotFound status when there was none.
  absl::Status DoneStatus(uint64_t cookie) const {
    for (const Recorded& event : events) {
      if (event.kind == Kind::kDone && event.cookie == cookie) return event.status;
    }
    return absl::NotFoundError(absl::StrCat("no kDone for cookie ", cookie));
  }
  int Count(Kind kind, uint64_t cookie) const {
    int count = 0;
    for (const Recorded& event : events) count += event.kind == kind && event.cookie == cookie;
    return count;
  }
};

// Feeds `pieces` in order, draining events after each, the way a receive loop would. Requests
// leave `lookup` at their kDone, as the runtime frees the slot.
ParseResult Feed(ReplyParser& parser, FakeLookup& lookup,
                 const std::vector<absl::Span<const uint8_t>>& pieces) {
  ParseResult result;
  for (absl::Span<const uint8_t> rest : pieces) {
    while (true) {
      ReplyEvent event;
      absl::StatusOr<size_t> consumed = parser.Next(rest, &event);
      if (!consumed.ok()) {
        result.fatal = consumed.status();
        return result;
      }
      EXPECT_LE(*consumed, rest.size());
      rest.remove_prefix(*consumed);
      if (event.kind == Kind::kNone) {
        if (*consumed == 0) break;
        continue;
      }
      Recorded recorded;
      recorded.kind = event.kind;
      recorded.cookie = event.cookie;
      recorded.buffer_offset = event.buffer_offset;
      recorded.length = event.length;
      recorded.data.assign(event.data.begin(), event.data.end());
      recorded.context_id = event.context_id;
      recorded.extents.assign(event.extents.begin(), event.extents.end());
      recorded.status = event.status;
      EXPECT_EQ(event.request, lookup.Find(event.cookie));
      Recorded* last = result.events.empty() ? nullptr : &result.events.back();
      if (event.kind == Kind::kReadData && last != nullptr && last->kind == Kind::kReadData &&
          last->cookie == event.cookie &&
          last->buffer_offset + last->data.size() == event.buffer_offset) {
        last->data += recorded.data;
        last->length += recorded.length;
      } else {
        result.events.push_back(std::move(recorded));
      }
      if (event.kind == Kind::kDone) lookup.Remove(event.cookie);
    }
  }
  return result;
}

ParseResult FeedWhole(ReplyParser& parser, FakeLookup& lookup, const Bytes& bytes) {
  return Feed(parser, lookup, {absl::MakeConstSpan(bytes)});
}

class ReplyParserTest : public ::testing::Test {
 protected:
  ReplyParser& Make(ReplyMode mode, uint64_t max_buffered_chunk_bytes = 1u << 20) {
    ReplyParserOptions options;
    options.mode = mode;
    options.meta_context_ids = {1, 2};
    options.max_buffered_chunk_bytes = max_buffered_chunk_bytes;
    parser_ = std::make_unique<ReplyParser>(options, &lookup_);
    return *parser_;
  }
  ParseResult Parse(const Bytes& bytes) { return FeedWhole(*parser_, lookup_, bytes); }

  FakeLookup lookup_;
  std::unique_ptr<ReplyParser> parser_;
};

MATCHER_P2(IsStatus, code, substring, "") {
  return arg.code() == code && ::testing::Matches(HasSubstr(substring))(std::string(arg.message()));
}
// A per-request protocol violation.
MATCHER_P(IsViolation, substring, "") {
  return arg.code() == absl::StatusCode::kDataLoss &&
         ::testing::Matches(HasSubstr(substring))(std::string(arg.message()));
}

// ============================== Simple replies ==============================================

TEST_F(ReplyParserTest, SimpleReadDeliversExactlyLengthBytesOfPayload) {
  Make(ReplyMode::kSimple);
  lookup_.Add(7, Command::kRead, 4096, 5);
  const Bytes stream = ByteBuilder()
                           .U32(0x67446698)  // NBD_SIMPLE_REPLY_MAGIC
                           .U32(0)           // error
                           .U64(7)           // cookie
                           .Str("hello")     // length bytes of data
                           .Bytes(SimpleReply(0, 8));
  lookup_.Add(8, Command::kFlush, 0, 0);
  const ParseResult result = Parse(stream);
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(),
              ElementsAre("data cookie=7 at=0 \"hello\"", "done cookie=7 OK", "done cookie=8 OK"));
}

TEST_F(ReplyParserTest, SimpleReadErrorCarriesNoPayload) {
  Make(ReplyMode::kSimple);
  lookup_.Add(1, Command::kRead, 4096, 512);
  lookup_.Add(2, Command::kWrite, 0, 512);
  const ParseResult result = Parse(Concat({SimpleReply(kEIo, 1), SimpleReply(0, 2)}));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
  EXPECT_EQ(result.DoneStatus(1), NbdErrorToStatus(kEIo, "NBD_CMD_READ at offset 4096 length 512"));
  EXPECT_THAT(result.DoneStatus(1),
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_CMD_READ at offset 4096 length 512: server replied NBD_EIO"));
  EXPECT_TRUE(result.DoneStatus(2).ok());
}

TEST_F(ReplyParserTest, SimpleReplyErrorToWriteFailsIt) {
  Make(ReplyMode::kSimple);
  lookup_.Add(3, Command::kWrite, 0, 4096);
  const ParseResult result = Parse(SimpleReply(kEPerm, 3));
  EXPECT_THAT(result.DoneStatus(3),
              IsStatus(absl::StatusCode::kPermissionDenied, "server replied NBD_EPERM"));
}

TEST_F(ReplyParserTest, SimpleZeroLengthReadIsDoneWithoutPayload) {
  Make(ReplyMode::kSimple);
  lookup_.Add(1, Command::kRead, 0, 0);
  lookup_.Add(2, Command::kFlush, 0, 0);
  const ParseResult result = Parse(Concat({SimpleReply(0, 1), SimpleReply(0, 2)}));
  EXPECT_THAT(result.Descriptions(), ElementsAre("done cookie=1 OK", "done cookie=2 OK"));
}

TEST_F(ReplyParserTest, SimpleModeRejectsStructuredMagic) {
  Make(ReplyMode::kSimple);
  lookup_.Add(1, Command::kFlush, 0, 0);
  const ParseResult result = Parse(Chunk(kDone, Type(ReplyType::kNone), 1, {}));
  EXPECT_THAT(result.fatal, IsStatus(absl::StatusCode::kDataLoss,
                                     "structured reply magic 0x668e33ef received, but the reply "
                                     "mode is simple"));
}

TEST_F(ReplyParserTest, UnknownMagicIsFatalAndStaysFatal) {
  Make(ReplyMode::kStructured);
  const Bytes stream = ByteBuilder().U32(0xdeadbeef).Zeroes(12);
  const ParseResult result = Parse(stream);
  EXPECT_THAT(result.fatal,
              IsStatus(absl::StatusCode::kDataLoss, "unknown reply magic 0xdeadbeef"));
  ReplyEvent event;
  EXPECT_EQ(parser_->Next(absl::MakeConstSpan(SimpleReply(0, 1)), &event).status(), result.fatal);
}

TEST_F(ReplyParserTest, CookieNotInFlightIsFatal) {
  Make(ReplyMode::kSimple);
  EXPECT_THAT(
      Parse(SimpleReply(0, 99)).fatal,
      IsStatus(absl::StatusCode::kDataLoss, "simple reply for cookie 99, which is not in flight"));
  Make(ReplyMode::kStructured);
  EXPECT_THAT(Parse(Chunk(kNoFlags, Type(ReplyType::kOffsetData), 42, DataPayload(0, "x"))).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_OFFSET_DATA chunk for cookie 42, which is not in flight"));
}

TEST_F(ReplyParserTest, ChunkAfterDoneIsForCookieNoLongerInFlight) {
  Make(ReplyMode::kStructured);
  lookup_.Add(5, Command::kFlush, 0, 0);
  const ParseResult result = Parse(Concat(
      {Chunk(kDone, Type(ReplyType::kNone), 5, {}), Chunk(kDone, Type(ReplyType::kNone), 5, {})}));
  EXPECT_TRUE(result.DoneStatus(5).ok());
  EXPECT_THAT(result.fatal, IsStatus(absl::StatusCode::kDataLoss,
                                     "NBD_REPLY_TYPE_NONE chunk for cookie 5, which is not in "
                                     "flight"));
}

TEST_F(ReplyParserTest, CookieMayBeReusedAfterDone) {
  Make(ReplyMode::kStructured);
  lookup_.Add(5, Command::kRead, 0, 2);
  ParseResult first = Parse(Chunk(kDone, Type(ReplyType::kOffsetData), 5, DataPayload(0, "ab")));
  EXPECT_THAT(first.Descriptions(), ElementsAre("data cookie=5 at=0 \"ab\"", "done cookie=5 OK"));
  lookup_.Add(5, Command::kWrite, 0, 2);  // same cookie, new request
  ParseResult second = Parse(SimpleReply(0, 5));
  EXPECT_THAT(second.Descriptions(), ElementsAre("done cookie=5 OK"));
}

// ============================== Structured replies: every chunk type =========================

TEST_F(ReplyParserTest, StructuredAcceptsSimpleReplyWithoutPayload) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  lookup_.Add(2, Command::kTrim, 0, 512);
  const ParseResult result = Parse(Concat({SimpleReply(0, 1), SimpleReply(kENoSpc, 2)}));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_TRUE(result.DoneStatus(1).ok());
  EXPECT_THAT(result.DoneStatus(2),
              IsStatus(absl::StatusCode::kResourceExhausted, "server replied NBD_ENOSPC"));
}

TEST_F(ReplyParserTest, StructuredSimpleReplyToReadIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  EXPECT_THAT(Parse(SimpleReply(0, 1)).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "simple reply (error 0) to NBD_CMD_READ with cookie 1, but structured "
                       "replies were negotiated"));
}

TEST_F(ReplyParserTest, StructuredModeRejectsExtendedMagic) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kFlush, 0, 0);
  EXPECT_THAT(Parse(ExtendedChunk(kDone, Type(ReplyType::kNone), 1, 0, {})).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "extended reply magic 0x6e8a278c received, but the reply mode is "
                       "structured"));
}

TEST_F(ReplyParserTest, NoneChunkWithDoneCompletesRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(0x1122334455667788, Command::kFlush, 0, 0);
  const Bytes stream = ByteBuilder()
                           .U32(0x668e33ef)          // NBD_STRUCTURED_REPLY_MAGIC
                           .U16(1)                   // NBD_REPLY_FLAG_DONE
                           .U16(0)                   // NBD_REPLY_TYPE_NONE
                           .U64(0x1122334455667788)  // cookie
                           .U32(0);                  // length
  const ParseResult result = Parse(stream);
  EXPECT_THAT(result.Descriptions(), ElementsAre("done cookie=1234605616436508552 OK"));
}

TEST_F(ReplyParserTest, NoneChunkWithPayloadIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kFlush, 0, 0);
  EXPECT_THAT(
      Parse(Chunk(kDone, Type(ReplyType::kNone), 1, ByteBuilder().U32(0))).fatal,
      IsStatus(absl::StatusCode::kDataLoss, "NBD_REPLY_TYPE_NONE chunk length must be 0, got 4"));
}

TEST_F(ReplyParserTest, NoneChunkWithoutDoneIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kFlush, 0, 0);
  EXPECT_THAT(Parse(Chunk(kNoFlags, Type(ReplyType::kNone), 1, {})).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_NONE chunk for cookie 1 must carry NBD_REPLY_FLAG_DONE"));
}

TEST_F(ReplyParserTest, OffsetDataChunksReassembleOutOfOrder) {
  Make(ReplyMode::kStructured);
  InflightRequest& read = lookup_.Add(1, Command::kRead, 1000, 6);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(1004, "ef")),
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(1002, "cd")),
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(1000, "ab")),
      Chunk(kDone, Type(ReplyType::kNone), 1, {}),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(),
              ElementsAre("data cookie=1 at=4 \"ef\"", "data cookie=1 at=2 \"cd\"",
                          "data cookie=1 at=0 \"ab\"", "done cookie=1 OK"));
  (void)read;  // removed from the table at kDone
}

TEST_F(ReplyParserTest, CoveredRangesStaySortedAndMerged) {
  Make(ReplyMode::kStructured);
  InflightRequest& read = lookup_.Add(1, Command::kRead, 0, 10);
  Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(8, "ij")),
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(0, "ab")),
      Chunk(kNoFlags, Type(ReplyType::kOffsetHole), 1, HolePayload(4, 2)),
  }));
  ASSERT_EQ(read.progress.covered.size(), 3u);
  EXPECT_EQ(read.progress.covered[0].begin, 0u);
  EXPECT_EQ(read.progress.covered[1].begin, 4u);
  EXPECT_EQ(read.progress.covered[2].end, 10u);
  Parse(Concat({Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(2, "cd")),
                Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(6, "gh"))}));
  ASSERT_EQ(read.progress.covered.size(), 1u);
  EXPECT_EQ(read.progress.covered[0].begin, 0u);
  EXPECT_EQ(read.progress.covered[0].end, 10u);
  EXPECT_EQ(read.progress.bytes_covered, 10u);
  EXPECT_EQ(read.progress.content_chunks, 5u);
  EXPECT_TRUE(read.progress.error.ok());
}

TEST_F(ReplyParserTest, OffsetDataShorterThanNineBytesIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  EXPECT_THAT(Parse(Chunk(kDone, Type(ReplyType::kOffsetData), 1, ByteBuilder().U64(0))).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_OFFSET_DATA chunk length must be at least 9, got 8"));
}

TEST_F(ReplyParserTest, OffsetHoleReportsZeroesAndMayBeFinal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 512, 1024);
  const Bytes stream = Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(512, std::string(512, 'x'))),
      ByteBuilder()
          .U32(0x668e33ef)
          .U16(1)     // NBD_REPLY_FLAG_DONE
          .U16(2)     // NBD_REPLY_TYPE_OFFSET_HOLE
          .U64(1)     // cookie
          .U32(12)    // length
          .U64(1024)  // offset
          .U32(512),  // hole size
  });
  const ParseResult result = Parse(stream);
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(),
              ElementsAre(absl::StrCat("data cookie=1 at=0 \"", std::string(512, 'x'), "\""),
                          "hole cookie=1 at=512 length=512", "done cookie=1 OK"));
}

TEST_F(ReplyParserTest, OffsetHoleOfWrongLengthIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  EXPECT_THAT(
      Parse(Chunk(kDone, Type(ReplyType::kOffsetHole), 1, ByteBuilder().U64(0).U32(512).U8(0)))
          .fatal,
      IsStatus(absl::StatusCode::kDataLoss,
               "NBD_REPLY_TYPE_OFFSET_HOLE chunk length must be 12, got 13"));
}

TEST_F(ReplyParserTest, OffsetHoleOfSizeZeroFailsRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetHole), 1, HolePayload(0, 0)),
      Chunk(kDone, Type(ReplyType::kOffsetData), 1, DataPayload(0, std::string(512, 'a'))),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kReadHole, 1), 0);
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_CMD_READ at offset 0 length 512: NBD_REPLY_TYPE_OFFSET_HOLE chunk "
                          "at offset 0 has hole size 0"));
}

TEST_F(ReplyParserTest, BlockStatusDeliversExtentsPerContext) {
  Make(ReplyMode::kStructured);
  lookup_.Add(9, Command::kBlockStatus, 0, 8192);
  const Bytes stream = Concat({
      ByteBuilder()
          .U32(0x668e33ef)
          .U16(0)     // flags
          .U16(5)     // NBD_REPLY_TYPE_BLOCK_STATUS
          .U64(9)     // cookie
          .U32(20)    // length: context id + 2 descriptors
          .U32(1)     // metadata context id
          .U32(4096)  // extent length
          .U32(kStateHole | kStateZero)
          .U32(8192)  // last extent may reach past the request
          .U32(0),
      Chunk(kDone, Type(ReplyType::kBlockStatus), 9, BlockStatusPayload(2, {{8192, 1}})),
  });
  const ParseResult result = Parse(stream);
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(),
              ElementsAre("status cookie=9 context=1 4096/3 8192/0",
                          "status cookie=9 context=2 8192/1", "done cookie=9 OK"));
}

TEST_F(ReplyParserTest, BlockStatusOfBadLengthIsFatal) {
  for (const Bytes& payload :
       {Bytes(ByteBuilder().U32(1)), Bytes(ByteBuilder().U32(1).U32(512).U16(0))}) {
    Make(ReplyMode::kStructured);
    lookup_.Add(1, Command::kBlockStatus, 0, 512);
    EXPECT_THAT(Parse(Chunk(kDone, Type(ReplyType::kBlockStatus), 1, payload)).fatal,
                IsStatus(absl::StatusCode::kDataLoss,
                         absl::StrCat("NBD_REPLY_TYPE_BLOCK_STATUS chunk length must be 4 + a "
                                      "positive multiple of 8, got ",
                                      payload.size())));
  }
}

TEST_F(ReplyParserTest, BlockStatusExtWithoutExtendedHeadersIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kBlockStatus, 0, 512);
  EXPECT_THAT(
      Parse(Chunk(kDone, Type(ReplyType::kBlockStatusExt), 1, BlockStatusExtPayload(1, {{512, 0}})))
          .fatal,
      IsStatus(absl::StatusCode::kDataLoss,
               "NBD_REPLY_TYPE_BLOCK_STATUS_EXT chunk received, but extended headers "
               "were not negotiated"));
}

TEST_F(ReplyParserTest, ErrorChunkFailsRequestWithServerMessage) {
  Make(ReplyMode::kStructured);
  lookup_.Add(4, Command::kWrite, 0, 4096);
  const Bytes stream = ByteBuilder()
                           .U32(0x668e33ef)
                           .U16(1)       // NBD_REPLY_FLAG_DONE
                           .U16(0x8001)  // NBD_REPLY_TYPE_ERROR
                           .U64(4)
                           .U32(15)  // 6 + message
                           .U32(28)  // NBD_ENOSPC
                           .U16(9)   // message length
                           .Str("disk full");
  const ParseResult result = Parse(stream);
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.DoneStatus(4),
            NbdErrorToStatus(kENoSpc, "NBD_CMD_WRITE at offset 0 length 4096", "disk full"));
  EXPECT_THAT(result.DoneStatus(4),
              IsStatus(absl::StatusCode::kResourceExhausted,
                       "NBD_CMD_WRITE at offset 0 length 4096: server replied NBD_ENOSPC: disk "
                       "full"));
}

TEST_F(ReplyParserTest, ErrorChunkNeedNotBeFinalAndFirstErrorWins) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 1024);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kError), 1, ErrorPayload(kEIo, "first")),
      Chunk(kNoFlags, Type(ReplyType::kError), 1, ErrorPayload(kEPerm, "second")),
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(0, "late data")),
      Chunk(kDone, Type(ReplyType::kNone), 1, {}),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  // Data after the request failed is not handed out, and the coverage rule no longer applies.
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
  EXPECT_THAT(result.DoneStatus(1),
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_CMD_READ at offset 0 length 1024: server replied NBD_EIO: first"));
}

TEST_F(ReplyParserTest, ErrorChunkShorterThanSixBytesIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  EXPECT_THAT(Parse(Chunk(kDone, Type(ReplyType::kError), 1, ByteBuilder().U32(kEIo).U8(0))).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_ERROR chunk length must be at least 6, got 5"));
}

TEST_F(ReplyParserTest, ErrorMessageLongerThanChunkIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  EXPECT_THAT(
      Parse(Chunk(kDone, Type(ReplyType::kError), 1, ByteBuilder().U32(kEIo).U16(10).Str("abc")))
          .fatal,
      IsStatus(absl::StatusCode::kDataLoss,
               "NBD_REPLY_TYPE_ERROR message length 10 does not fit in chunk length 9"));
}

TEST_F(ReplyParserTest, ErrorMessageBeyondStringLimitIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  EXPECT_THAT(
      Parse(Chunk(kDone, Type(ReplyType::kError), 1, ErrorPayload(kEIo, std::string(4097, 'm'))))
          .fatal,
      IsStatus(absl::StatusCode::kDataLoss,
               "NBD_REPLY_TYPE_ERROR message length 4097 exceeds the string limit of "
               "4096"));
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  const ParseResult at_limit =
      Parse(Chunk(kDone, Type(ReplyType::kError), 1, ErrorPayload(kEIo, std::string(4096, 'm'))));
  ASSERT_TRUE(at_limit.fatal.ok()) << at_limit.fatal;
  EXPECT_THAT(at_limit.DoneStatus(1), IsStatus(absl::StatusCode::kDataLoss, "NBD_EIO: mmmm"));
}

TEST_F(ReplyParserTest, ErrorChunkWithBytesAfterMessageIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  EXPECT_THAT(Parse(Chunk(kDone, Type(ReplyType::kError), 1,
                          ByteBuilder().U32(kEIo).U16(3).Str("abc").U32(0)))
                  .fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_ERROR chunk length 13 does not match message length 3 "
                       "(expected 9)"));
}

TEST_F(ReplyParserTest, ErrorValueZeroFailsRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  const ParseResult result =
      Parse(Chunk(kDone, Type(ReplyType::kError), 1, ErrorPayload(0, "oops")));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_CMD_WRITE at offset 0 length 512: NBD_REPLY_TYPE_ERROR chunk "
                          "carries error value 0: oops"));
}

TEST_F(ReplyParserTest, ErrorOffsetInsideRequestNamesTheOffset) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 4096, 1024);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(4096, std::string(512, 'a'))),
      ByteBuilder()
          .U32(0x668e33ef)
          .U16(1)
          .U16(0x8002)  // NBD_REPLY_TYPE_ERROR_OFFSET
          .U64(1)
          .U32(6 + 3 + 8)
          .U32(5)  // NBD_EIO
          .U16(3)
          .Str("bad")
          .U64(4608),  // offset inside the request
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 1);
  EXPECT_THAT(result.DoneStatus(1),
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_CMD_READ at offset 4096 length 1024 (error at offset 4608): server "
                       "replied NBD_EIO: bad"));
}

TEST_F(ReplyParserTest, ErrorOffsetOutsideRequestFailsRequestAsViolation) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 4096, 1024);
  const ParseResult result =
      Parse(Chunk(kDone, Type(ReplyType::kErrorOffset), 1, ErrorOffsetPayload(kEIo, "", 5120)));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_REPLY_TYPE_ERROR_OFFSET offset 5120 lies outside the request"));
}

TEST_F(ReplyParserTest, ErrorOffsetShorterThanFourteenBytesIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  EXPECT_THAT(Parse(Chunk(kDone, Type(ReplyType::kErrorOffset), 1,
                          ByteBuilder().U32(kEIo).U16(0).Zeroes(7)))
                  .fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_ERROR_OFFSET chunk length must be at least 14, got 13"));
}

TEST_F(ReplyParserTest, UnknownErrorTypeFailsRequestAndSkipsPayload) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  lookup_.Add(2, Command::kFlush, 0, 0);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, 0x8005, 1, ByteBuilder().U32(kENotSup).U16(2).Str("hi").Str("tail")),
      Chunk(kDone, Type(ReplyType::kNone), 2, {}),
      Chunk(kDone, Type(ReplyType::kNone), 1, {}),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Descriptions()[0], "done cookie=2 OK");
  EXPECT_THAT(result.DoneStatus(1),
              IsStatus(absl::StatusCode::kUnimplemented,
                       "NBD_CMD_READ at offset 0 length 512 (unknown chunk type 0x8005): server "
                       "replied NBD_ENOTSUP"));
}

TEST_F(ReplyParserTest, UnknownErrorTypeTooShortForErrorValueFailsRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  const ParseResult result = Parse(Chunk(kDone, 0x8007, 1, ByteBuilder().U16(0).U8(0)));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("unknown chunk type 0x8007 chunk of length 3 is too short to carry an "
                          "error value"));
}

TEST_F(ReplyParserTest, UnknownErrorTypeWithOversizedMessageIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  EXPECT_THAT(Parse(Chunk(kDone, 0x8007, 1, ByteBuilder().U32(kEIo).U16(5).Str("ab"))).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "unknown chunk type 0x8007 message length 5 does not fit in chunk length "
                       "8"));
}

TEST_F(ReplyParserTest, UnknownTypeWithoutErrorBitIsFatal) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  EXPECT_THAT(Parse(Chunk(kDone, 4, 1, ByteBuilder().U32(0))).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "unknown chunk type 0x0004 without the error bit, for cookie 1"));
}

TEST_F(ReplyParserTest, BufferedChunksAreCappedButReadDataIsNot) {
  Make(ReplyMode::kStructured, /*max_buffered_chunk_bytes=*/32);
  lookup_.Add(1, Command::kBlockStatus, 0, 1 << 20);
  std::vector<Extent> extents(4, Extent{512, 0});  // 4 + 32 bytes
  EXPECT_THAT(
      Parse(Chunk(kDone, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(1, extents))).fatal,
      IsStatus(absl::StatusCode::kDataLoss,
               "NBD_REPLY_TYPE_BLOCK_STATUS chunk length 36 exceeds the cap of 32 bytes "
               "on buffered chunks"));

  Make(ReplyMode::kStructured, /*max_buffered_chunk_bytes=*/32);
  lookup_.Add(1, Command::kWrite, 0, 512);
  EXPECT_THAT(
      Parse(Chunk(kDone, Type(ReplyType::kError), 1, ErrorPayload(kEIo, std::string(27, 'm'))))
          .fatal,
      IsStatus(absl::StatusCode::kDataLoss,
               "NBD_REPLY_TYPE_ERROR chunk length 33 exceeds the cap of 32 bytes"));

  Make(ReplyMode::kStructured, /*max_buffered_chunk_bytes=*/32);
  lookup_.Add(1, Command::kRead, 0, 4096);
  const ParseResult read =
      Parse(Chunk(kDone, Type(ReplyType::kOffsetData), 1, DataPayload(0, std::string(4096, 'r'))));
  ASSERT_TRUE(read.fatal.ok()) << read.fatal;
  EXPECT_TRUE(read.DoneStatus(1).ok());
}

// ============================== Per-request violations ======================================

TEST_F(ReplyParserTest, ContentChunkForOtherCommandFailsRequestAndIsSkipped) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kWrite, 0, 512);
  lookup_.Add(2, Command::kTrim, 0, 512);
  const ParseResult result = Parse(Concat({
      Chunk(kDone, Type(ReplyType::kOffsetData), 1, DataPayload(0, "stray")),
      Chunk(kDone, Type(ReplyType::kOffsetHole), 2, HolePayload(0, 512)),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
  EXPECT_EQ(result.Count(Kind::kReadHole, 2), 0);
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_CMD_WRITE at offset 0 length 512: NBD_REPLY_TYPE_OFFSET_DATA chunk "
                          "is only valid for NBD_CMD_READ"));
  EXPECT_THAT(result.DoneStatus(2),
              IsViolation("NBD_CMD_TRIM at offset 0 length 512: NBD_REPLY_TYPE_OFFSET_HOLE chunk "
                          "is only valid for NBD_CMD_READ"));
}

TEST_F(ReplyParserTest, DataOutsideRequestFailsRequestWithoutDeliveringBytes) {
  struct Case {
    uint64_t offset;
    std::string data;
  };
  for (const Case& bad : {Case{4095, "x"}, Case{4096 + 511, "xy"}, Case{8192, "z"}}) {
    Make(ReplyMode::kStructured);
    lookup_.Add(1, Command::kRead, 4096, 512);
    const ParseResult result = Parse(Concat({
        Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(bad.offset, bad.data)),
        Chunk(kDone, Type(ReplyType::kNone), 1, {}),
    }));
    ASSERT_TRUE(result.fatal.ok()) << result.fatal;
    EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
    EXPECT_THAT(result.DoneStatus(1),
                IsViolation(absl::StrCat("NBD_REPLY_TYPE_OFFSET_DATA chunk at offset ", bad.offset,
                                         " size ", bad.data.size(), " lies outside the request")));
  }
}

TEST_F(ReplyParserTest, HoleWhoseEndWrapsAroundTwoToTheSixtyFourFailsRequest) {
  Make(ReplyMode::kStructured);
  const uint64_t request_offset = ~uint64_t{0} - 4095;  // the last 4 KiB of a 2^64 export
  lookup_.Add(1, Command::kRead, request_offset, 4096);
  const uint64_t hole_offset = ~uint64_t{0} - 7;
  const ParseResult result =
      Parse(Chunk(kDone, Type(ReplyType::kOffsetHole), 1, HolePayload(hole_offset, 16)));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kReadHole, 1), 0);
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation(absl::StrCat("NBD_REPLY_TYPE_OFFSET_HOLE chunk at offset ", hole_offset,
                                       " size 16 lies outside the request")));
}

TEST_F(ReplyParserTest, OverlappingContentChunkFailsRequestAndIsNotDelivered) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 8);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(0, "abcd")),
      Chunk(kNoFlags, Type(ReplyType::kOffsetHole), 1, HolePayload(6, 2)),
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(3, "XYZ")),
      Chunk(kDone, Type(ReplyType::kNone), 1, {}),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(),
              ElementsAre("data cookie=1 at=0 \"abcd\"", "hole cookie=1 at=6 length=2",
                          ::testing::StartsWith("done cookie=1 DATA_LOSS")));
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_REPLY_TYPE_OFFSET_DATA chunk at offset 3 size 3 overlaps an "
                          "earlier content chunk"));
}

TEST_F(ReplyParserTest, DontFragmentAllowsOneContentChunk) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 4, kCmdFlagDf);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(0, "ab")),
      Chunk(kDone, Type(ReplyType::kOffsetData), 1, DataPayload(2, "cd")),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(), ElementsAre("data cookie=1 at=0 \"ab\"",
                                                 ::testing::StartsWith("done cookie=1 DATA_LOSS")));
  EXPECT_THAT(
      result.DoneStatus(1),
      IsViolation("NBD_CMD_FLAG_DF allows one content chunk, got NBD_REPLY_TYPE_OFFSET_DATA "
                  "number 2"));

  Make(ReplyMode::kStructured);
  lookup_.Add(2, Command::kRead, 0, 4, kCmdFlagDf);
  const ParseResult whole =
      Parse(Chunk(kDone, Type(ReplyType::kOffsetData), 2, DataPayload(0, "abcd")));
  EXPECT_TRUE(whole.DoneStatus(2).ok());
}

TEST_F(ReplyParserTest, SuccessfulReadMustCoverTheWholeRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 1024);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetHole), 1, HolePayload(512, 512)),
      Chunk(kDone, Type(ReplyType::kNone), 1, {}),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_CMD_READ at offset 0 length 1024: reply did not cover the whole "
                          "request: 512 of 1024 bytes described by content chunks"));
}

TEST_F(ReplyParserTest, BlockStatusForOtherCommandFailsRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 512);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(1, {{512, 0}})),
      Chunk(kDone, Type(ReplyType::kOffsetData), 1, DataPayload(0, std::string(512, 'a'))),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kBlockStatus, 1), 0);
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_CMD_READ at offset 0 length 512: NBD_REPLY_TYPE_BLOCK_STATUS chunk "
                          "is only valid for NBD_CMD_BLOCK_STATUS"));
}

TEST_F(ReplyParserTest, BlockStatusForUnnegotiatedContextFailsRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kBlockStatus, 0, 512);
  const ParseResult result =
      Parse(Chunk(kDone, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(7, {{512, 0}})));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kBlockStatus, 1), 0);
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_REPLY_TYPE_BLOCK_STATUS chunk for meta context id 7, which was not "
                          "negotiated"));
}

TEST_F(ReplyParserTest, ExtentOfLengthZeroFailsRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kBlockStatus, 0, 4096);
  const ParseResult result = Parse(
      Chunk(kDone, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(1, {{512, 0}, {0, 1}})));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kBlockStatus, 1), 0);
  EXPECT_THAT(result.DoneStatus(1), IsViolation("extent 1 of meta context id 1 has length 0"));
}

TEST_F(ReplyParserTest, RequestOneAllowsOneExtentNoLongerThanTheRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kBlockStatus, 0, 4096, kCmdFlagReqOne);
  lookup_.Add(2, Command::kBlockStatus, 0, 4096, kCmdFlagReqOne);
  lookup_.Add(3, Command::kBlockStatus, 0, 4096, kCmdFlagReqOne);
  const ParseResult result = Parse(Concat({
      Chunk(kDone, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(1, {{512, 0}, {512, 1}})),
      Chunk(kDone, Type(ReplyType::kBlockStatus), 2, BlockStatusPayload(1, {{8192, 0}})),
      Chunk(kDone, Type(ReplyType::kBlockStatus), 3, BlockStatusPayload(1, {{4096, 3}})),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_CMD_FLAG_REQ_ONE allows one extent per chunk, got 2 for meta "
                          "context id 1"));
  EXPECT_THAT(result.DoneStatus(2),
              IsViolation("NBD_CMD_FLAG_REQ_ONE extent length 8192 exceeds the request length"));
  EXPECT_TRUE(result.DoneStatus(3).ok());
  EXPECT_EQ(result.Count(Kind::kBlockStatus, 3), 1);
}

TEST_F(ReplyParserTest, OnlyTheLastExtentMayReachPastTheRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kBlockStatus, 0, 4096);
  lookup_.Add(2, Command::kBlockStatus, 0, 4096);
  const ParseResult result = Parse(Concat({
      Chunk(kDone, Type(ReplyType::kBlockStatus), 1,
            BlockStatusPayload(1, {{2048, 0}, {1 << 20, 1}})),
      Chunk(kDone, Type(ReplyType::kBlockStatus), 2,
            BlockStatusPayload(1, {{2048, 0}, {2048, 1}, {512, 0}})),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_TRUE(result.DoneStatus(1).ok());
  EXPECT_THAT(result.DoneStatus(2),
              IsViolation("extent 1 of meta context id 1 reaches the end of the request, but "
                          "only the last extent may"));
}

TEST_F(ReplyParserTest, SecondBlockStatusChunkForSameContextFailsRequest) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kBlockStatus, 0, 4096);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(1, {{4096, 0}})),
      Chunk(kNoFlags, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(2, {{4096, 0}})),
      Chunk(kDone, Type(ReplyType::kBlockStatus), 1, BlockStatusPayload(1, {{4096, 1}})),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kBlockStatus, 1), 2);
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("second NBD_REPLY_TYPE_BLOCK_STATUS chunk for meta context id 1"));
}

TEST_F(ReplyParserTest, SuccessfulBlockStatusNeedsAStatusChunk) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kBlockStatus, 0, 4096);
  const ParseResult result = Parse(Chunk(kDone, Type(ReplyType::kNone), 1, {}));
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("NBD_CMD_BLOCK_STATUS at offset 0 length 4096: successful reply carried "
                          "no block status chunk"));
}

// ============================== Extended headers ============================================

TEST_F(ReplyParserTest, ExtendedReadWithDataHoleAndNone) {
  Make(ReplyMode::kExtended);
  lookup_.Add(3, Command::kRead, 65536, 16);
  const Bytes stream = Concat({
      ByteBuilder()
          .U32(0x6e8a278c)  // NBD_EXTENDED_REPLY_MAGIC
          .U16(0)           // flags
          .U16(1)           // NBD_REPLY_TYPE_OFFSET_DATA
          .U64(3)           // cookie
          .U64(65536)       // offset: the request's
          .U64(8 + 8)       // length
          .U64(65536 + 8)   // data offset
          .Str("01234567"),
      ExtendedChunk(kNoFlags, Type(ReplyType::kOffsetHole), 3, 65536, HolePayload(65536, 8)),
      ExtendedChunk(kDone, Type(ReplyType::kNone), 3, 65536, {}),
  });
  const ParseResult result = Parse(stream);
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(),
              ElementsAre("data cookie=3 at=8 \"01234567\"", "hole cookie=3 at=0 length=8",
                          "done cookie=3 OK"));
}

TEST_F(ReplyParserTest, ExtendedErrorAndNoneRepliesForOtherCommands) {
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kWrite, 512, 512);
  lookup_.Add(2, Command::kFlush, 0, 0);
  const ParseResult result = Parse(Concat({
      ExtendedChunk(kDone, Type(ReplyType::kError), 1, 512, ErrorPayload(kEPerm, "read-only")),
      ExtendedChunk(kDone, Type(ReplyType::kNone), 2, 0, {}),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.DoneStatus(1),
              IsStatus(absl::StatusCode::kPermissionDenied,
                       "NBD_CMD_WRITE at offset 512 length 512: server replied NBD_EPERM: "
                       "read-only"));
  EXPECT_TRUE(result.DoneStatus(2).ok());
}

TEST_F(ReplyParserTest, ExtendedBlockStatusCarriesSixtyFourBitExtents) {
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kBlockStatus, 0, uint64_t{1} << 40);
  const Bytes stream = ByteBuilder()
                           .U32(0x6e8a278c)
                           .U16(1)  // NBD_REPLY_FLAG_DONE
                           .U16(6)  // NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                           .U64(1)
                           .U64(0)
                           .U64(8 + 2 * 16)
                           .U32(2)  // metadata context id
                           .U32(2)  // descriptor count
                           .U64(uint64_t{1} << 33)
                           .U64(uint64_t{1} << 40 | kStateHole)
                           .U64(uint64_t{1} << 41)
                           .U64(0);
  const ParseResult result = Parse(stream);
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  ASSERT_EQ(result.events.size(), 2u);
  EXPECT_EQ(result.events[0].kind, Kind::kBlockStatus);
  EXPECT_EQ(result.events[0].context_id, 2u);
  ASSERT_EQ(result.events[0].extents.size(), 2u);
  EXPECT_EQ(result.events[0].extents[0].length, uint64_t{1} << 33);
  EXPECT_EQ(result.events[0].extents[0].flags, (uint64_t{1} << 40) | kStateHole);
  EXPECT_EQ(result.events[0].extents[1].length, uint64_t{1} << 41);
  EXPECT_TRUE(result.DoneStatus(1).ok());
}

TEST_F(ReplyParserTest, ExtendedRejectsCompactBlockStatus) {
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kBlockStatus, 0, 512);
  EXPECT_THAT(Parse(ExtendedChunk(kDone, Type(ReplyType::kBlockStatus), 1, 0,
                                  BlockStatusPayload(1, {{512, 0}})))
                  .fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_BLOCK_STATUS chunk received, but extended headers were "
                       "negotiated and require NBD_REPLY_TYPE_BLOCK_STATUS_EXT"));
}

TEST_F(ReplyParserTest, ExtendedBlockStatusFramingIsChecked) {
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kBlockStatus, 0, 512);
  EXPECT_THAT(Parse(ExtendedChunk(kDone, Type(ReplyType::kBlockStatusExt), 1, 0,
                                  ByteBuilder().U32(1).U32(1).U64(512)))
                  .fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_BLOCK_STATUS_EXT chunk length must be 8 + a positive "
                       "multiple of 16, got 16"));
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kBlockStatus, 0, 512);
  EXPECT_THAT(Parse(ExtendedChunk(kDone, Type(ReplyType::kBlockStatusExt), 1, 0,
                                  ByteBuilder().U32(1).U32(3).U64(512).U64(0)))
                  .fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "NBD_REPLY_TYPE_BLOCK_STATUS_EXT descriptor count 3 does not match chunk "
                       "length 24 (1 descriptors)"));
}

TEST_F(ReplyParserTest, ExtendedModeRejectsCompactMagics) {
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kFlush, 0, 0);
  EXPECT_THAT(Parse(SimpleReply(0, 1)).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "simple reply magic 0x67446698 received, but extended headers were "
                       "negotiated"));
  Make(ReplyMode::kExtended);
  EXPECT_THAT(Parse(Chunk(kDone, Type(ReplyType::kNone), 1, {})).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "structured reply magic 0x668e33ef received, but the reply mode is "
                       "extended"));
}

// The 64-bit hole (NBD_REPLY_TYPE_OFFSET_HOLE_EXT = 3) was proposed but not merged into the
// spec: extended headers keep the 12-byte OFFSET_HOLE and type 3 is unknown.
TEST_F(ReplyParserTest, ExtendedHolesKeepTheirThirtyTwoBitSize) {
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kRead, 0, 512);
  EXPECT_THAT(
      Parse(ExtendedChunk(kDone, Type(ReplyType::kOffsetHole), 1, 0, ByteBuilder().U64(0).U64(512)))
          .fatal,
      IsStatus(absl::StatusCode::kDataLoss,
               "NBD_REPLY_TYPE_OFFSET_HOLE chunk length must be 12, got 16"));
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kRead, 0, 512);
  EXPECT_THAT(Parse(ExtendedChunk(kDone, 3, 1, 0, ByteBuilder().U64(0).U64(512))).fatal,
              IsStatus(absl::StatusCode::kDataLoss,
                       "unknown chunk type 0x0003 without the error bit, for cookie 1"));
}

TEST_F(ReplyParserTest, ExtendedHeaderOffsetMustMatchRequest) {
  Make(ReplyMode::kExtended);
  lookup_.Add(1, Command::kRead, 4096, 4);
  const ParseResult result =
      Parse(ExtendedChunk(kDone, Type(ReplyType::kOffsetData), 1, 0, DataPayload(4096, "abcd")));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
  EXPECT_THAT(result.DoneStatus(1),
              IsViolation("extended reply header offset 0 does not match the request offset"));
}

// ============================== Interleaving and direct receive =============================

TEST_F(ReplyParserTest, ChunksOfSeveralCookiesInterleaveOutOfOrder) {
  Make(ReplyMode::kStructured);
  lookup_.Add(10, Command::kRead, 0, 4);
  lookup_.Add(11, Command::kRead, 100, 4);
  lookup_.Add(12, Command::kBlockStatus, 0, 4096);
  lookup_.Add(13, Command::kWrite, 0, 4);
  const ParseResult result = Parse(Concat({
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 11, DataPayload(102, "YZ")),
      Chunk(kNoFlags, Type(ReplyType::kOffsetData), 10, DataPayload(0, "ab")),
      Chunk(kNoFlags, Type(ReplyType::kBlockStatus), 12, BlockStatusPayload(2, {{4096, 0}})),
      SimpleReply(0, 13),
      Chunk(kDone, Type(ReplyType::kOffsetHole), 10, HolePayload(2, 2)),
      Chunk(kDone, Type(ReplyType::kBlockStatus), 12, BlockStatusPayload(1, {{4096, 3}})),
      Chunk(kDone, Type(ReplyType::kOffsetData), 11, DataPayload(100, "WX")),
  }));
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(),
              ElementsAre("data cookie=11 at=2 \"YZ\"", "data cookie=10 at=0 \"ab\"",
                          "status cookie=12 context=2 4096/0", "done cookie=13 OK",
                          "hole cookie=10 at=2 length=2", "done cookie=10 OK",
                          "status cookie=12 context=1 4096/3", "done cookie=12 OK",
                          "data cookie=11 at=0 \"WX\"", "done cookie=11 OK"));
}

TEST_F(ReplyParserTest, PayloadCanBeReceivedDirectlyIntoTheBuffer) {
  Make(ReplyMode::kStructured);
  InflightRequest& read = lookup_.Add(1, Command::kRead, 1 << 20, 8);
  std::string buffer(8, '.');
  // Only the header and the 8-byte offset go through Next(); the 6 data bytes do not.
  const Bytes header = ByteBuilder()
                           .U32(kStructuredReplyMagic)
                           .U16(0)
                           .U16(Type(ReplyType::kOffsetData))
                           .U64(1)
                           .U32(8 + 6)
                           .U64((1 << 20) + 2);
  ReplyEvent event;
  ReplyParser::PayloadTarget target;
  EXPECT_FALSE(parser_->payload_target(&target));
  ASSERT_EQ(*parser_->Next(absl::MakeConstSpan(header), &event), header.size());
  EXPECT_EQ(event.kind, Kind::kNone);
  ASSERT_TRUE(parser_->payload_target(&target));
  EXPECT_EQ(target.request, &read);
  EXPECT_EQ(target.cookie, 1u);
  EXPECT_EQ(target.buffer_offset, 2u);
  EXPECT_EQ(target.remaining, 6u);
  EXPECT_FALSE(parser_->at_message_boundary());
  std::memcpy(buffer.data() + target.buffer_offset, "cdef", 4);  // a short receive
  parser_->PayloadReceivedDirectly(4);
  ASSERT_TRUE(parser_->payload_target(&target));
  EXPECT_EQ(target.buffer_offset, 6u);
  EXPECT_EQ(target.remaining, 2u);
  std::memcpy(buffer.data() + target.buffer_offset, "gh", 2);
  parser_->PayloadReceivedDirectly(2);
  EXPECT_FALSE(parser_->payload_target(&target));
  EXPECT_TRUE(parser_->at_message_boundary());

  // The rest goes through Next(): a data chunk for [0, 2) that ends the reply.
  const Bytes last = Chunk(kDone, Type(ReplyType::kOffsetData), 1, DataPayload(1 << 20, "ab"));
  const ParseResult result = Parse(last);
  ASSERT_TRUE(result.fatal.ok()) << result.fatal;
  EXPECT_THAT(result.Descriptions(), ElementsAre("data cookie=1 at=0 \"ab\"", "done cookie=1 OK"));
  EXPECT_EQ(buffer, "..cdefgh");
}

TEST_F(ReplyParserTest, DoneAfterDirectReceiveNeedsNoMoreBytes) {
  Make(ReplyMode::kSimple);
  lookup_.Add(1, Command::kRead, 0, 4);
  ReplyEvent event;
  const Bytes header = SimpleReply(0, 1);
  ASSERT_EQ(*parser_->Next(absl::MakeConstSpan(header), &event), header.size());
  ReplyParser::PayloadTarget target;
  ASSERT_TRUE(parser_->payload_target(&target));
  EXPECT_EQ(target.remaining, 4u);
  parser_->PayloadReceivedDirectly(4);
  ASSERT_EQ(*parser_->Next({}, &event), 0u);
  EXPECT_EQ(event.kind, Kind::kDone);
  EXPECT_EQ(event.cookie, 1u);
  EXPECT_TRUE(event.status.ok());
  ASSERT_EQ(*parser_->Next({}, &event), 0u);
  EXPECT_EQ(event.kind, Kind::kNone);
}

TEST_F(ReplyParserTest, SkippedPayloadIsNeverAPayloadTarget) {
  Make(ReplyMode::kStructured);
  lookup_.Add(1, Command::kRead, 0, 4);
  Bytes stream = Chunk(kDone, Type(ReplyType::kOffsetData), 1, DataPayload(100, "zzzz"));
  const size_t through_offset = kStructuredReplyHeaderSize + 8;
  ReplyEvent event;
  ASSERT_EQ(*parser_->Next(absl::MakeConstSpan(stream).subspan(0, through_offset), &event),
            through_offset);
  ReplyParser::PayloadTarget target;
  EXPECT_FALSE(parser_->payload_target(&target));
  const ParseResult result =
      Feed(*parser_, lookup_, {absl::MakeConstSpan(stream).subspan(through_offset)});
  EXPECT_EQ(result.Count(Kind::kReadData, 1), 0);
  EXPECT_THAT(result.DoneStatus(1), IsViolation("lies outside the request"));
}

// ============================== Any split gives the same events =============================

struct Scenario {
  ReplyMode mode;
  Bytes stream;
  void AddRequests(FakeLookup& lookup) const {
    lookup.Add(1, Command::kRead, 0, 1024);
    lookup.Add(2, Command::kBlockStatus, 0, 8192);
    lookup.Add(3, Command::kWrite, 0, 512);
    lookup.Add(4, Command::kFlush, 0, 0);
    lookup.Add(5, Command::kRead, 4096, 16);
    lookup.Add(6, Command::kTrim, 0, 512);
    lookup.Add(7, Command::kRead, 0, 8);
    lookup.Add(8, Command::kCache, 0, 512);
  }
};

Scenario MixedStructuredScenario() {
  return Scenario{
      ReplyMode::kStructured,
      Concat({
          Chunk(kNoFlags, Type(ReplyType::kOffsetData), 1, DataPayload(512, std::string(512, 'd'))),
          Chunk(kNoFlags, Type(ReplyType::kBlockStatus), 2,
                BlockStatusPayload(1, {{4096, 0}, {4096, 3}})),
          Chunk(kDone, Type(ReplyType::kOffsetHole), 1, HolePayload(0, 512)),
          Chunk(kDone, Type(ReplyType::kError), 3, ErrorPayload(kENoSpc, "full")),
          SimpleReply(0, 4),
          Chunk(kDone, Type(ReplyType::kOffsetData), 5, DataPayload(4096, "0123456789abcdef")),
          Chunk(kNoFlags, Type(ReplyType::kOffsetData), 7, DataPayload(0, "abcd")),
          Chunk(kDone, Type(ReplyType::kBlockStatus), 2, BlockStatusPayload(2, {{8192, 1}})),
          SimpleReply(kEPerm, 6),
          Chunk(kNoFlags, Type(ReplyType::kOffsetData), 7, DataPayload(2, "XXXXXX")),
          Chunk(kNoFlags, 0x8009, 8, ErrorPayload(kEIo, "odd")),
          Chunk(kDone, Type(ReplyType::kNone), 7, {}),
          Chunk(kDone, Type(ReplyType::kNone), 8, {}),
      })};
}

Scenario MixedExtendedScenario() {
  return Scenario{
      ReplyMode::kExtended,
      Concat({
          ExtendedChunk(kNoFlags, Type(ReplyType::kOffsetHole), 1, 0, HolePayload(0, 1000)),
          ExtendedChunk(kDone, Type(ReplyType::kBlockStatusExt), 2, 0,
                        BlockStatusExtPayload(1, {{uint64_t{1} << 36, 1}})),
          ExtendedChunk(kDone, Type(ReplyType::kOffsetData), 1, 0,
                        DataPayload(1000, std::string(24, 'q'))),
          ExtendedChunk(kDone, Type(ReplyType::kErrorOffset), 3, 0,
                        ErrorOffsetPayload(kEIo, "sector", 256)),
          ExtendedChunk(kDone, Type(ReplyType::kNone), 4, 0, {}),
          ExtendedChunk(kDone, Type(ReplyType::kOffsetData), 5, 4096,
                        DataPayload(4096, "0123456789abcdef")),
          ExtendedChunk(kDone, Type(ReplyType::kError), 6, 0, ErrorPayload(kEPerm, "")),
      })};
}

ParseResult ParseScenario(const Scenario& scenario,
                          const std::vector<absl::Span<const uint8_t>>& pieces) {
  FakeLookup lookup;
  scenario.AddRequests(lookup);
  ReplyParserOptions options;
  options.mode = scenario.mode;
  options.meta_context_ids = {1, 2};
  ReplyParser parser(options, &lookup);
  ParseResult result = Feed(parser, lookup, pieces);
  EXPECT_TRUE(parser.at_message_boundary());
  return result;
}

TEST(ReplyParserSplitTest, StructuredStreamOneShotEvents) {
  const Scenario scenario = MixedStructuredScenario();
  const ParseResult whole = ParseScenario(scenario, {absl::MakeConstSpan(scenario.stream)});
  ASSERT_TRUE(whole.fatal.ok()) << whole.fatal;
  const std::vector<std::string> events = whole.Descriptions();
  ASSERT_EQ(events.size(), 14u) << ::testing::PrintToString(events);
  EXPECT_EQ(events[0], absl::StrCat("data cookie=1 at=512 \"", std::string(512, 'd'), "\""));
  EXPECT_EQ(events[1], "status cookie=2 context=1 4096/0 4096/3");
  EXPECT_EQ(events[2], "hole cookie=1 at=0 length=512");
  EXPECT_EQ(events[3], "done cookie=1 OK");
  EXPECT_THAT(events[4], HasSubstr("done cookie=3 RESOURCE_EXHAUSTED"));
  EXPECT_EQ(events[5], "done cookie=4 OK");
  EXPECT_EQ(events[6], "data cookie=5 at=0 \"0123456789abcdef\"");
  EXPECT_EQ(events[7], "done cookie=5 OK");
  EXPECT_EQ(events[8], "data cookie=7 at=0 \"abcd\"");
  EXPECT_EQ(events[9], "status cookie=2 context=2 8192/1");
  EXPECT_EQ(events[10], "done cookie=2 OK");
  EXPECT_THAT(events[11], HasSubstr("done cookie=6 PERMISSION_DENIED"));
  EXPECT_THAT(events[12], HasSubstr("done cookie=7 DATA_LOSS"));
  EXPECT_THAT(events[12], HasSubstr("overlaps an earlier content chunk"));
  EXPECT_THAT(events[13], HasSubstr("done cookie=8 DATA_LOSS"));
  EXPECT_THAT(events[13], HasSubstr("unknown chunk type 0x8009"));
}

TEST(ReplyParserSplitTest, EverySingleSplitPointGivesTheSameEvents) {
  for (const Scenario& scenario : {MixedStructuredScenario(), MixedExtendedScenario()}) {
    const absl::Span<const uint8_t> all = absl::MakeConstSpan(scenario.stream);
    const ParseResult whole = ParseScenario(scenario, {all});
    ASSERT_TRUE(whole.fatal.ok()) << whole.fatal;
    ASSERT_GE(whole.events.size(), 10u);
    const std::vector<std::string> expected = whole.Descriptions();
    for (size_t split = 0; split <= all.size(); ++split) {
      const ParseResult pieces =
          ParseScenario(scenario, {all.subspan(0, split), all.subspan(split)});
      ASSERT_TRUE(pieces.fatal.ok()) << "split at " << split << ": " << pieces.fatal;
      ASSERT_EQ(pieces.Descriptions(), expected) << "split at " << split;
    }
  }
}

TEST(ReplyParserSplitTest, ByteByByteGivesTheSameEvents) {
  for (const Scenario& scenario : {MixedStructuredScenario(), MixedExtendedScenario()}) {
    const absl::Span<const uint8_t> all = absl::MakeConstSpan(scenario.stream);
    const ParseResult whole = ParseScenario(scenario, {all});
    std::vector<absl::Span<const uint8_t>> bytes;
    for (size_t i = 0; i < all.size(); ++i) bytes.push_back(all.subspan(i, 1));
    const ParseResult one_by_one = ParseScenario(scenario, bytes);
    ASSERT_TRUE(one_by_one.fatal.ok()) << one_by_one.fatal;
    EXPECT_EQ(one_by_one.Descriptions(), whole.Descriptions());
  }
}

TEST(ReplyParserSplitTest, ExtendedStreamOneShotEvents) {
  const Scenario scenario = MixedExtendedScenario();
  const ParseResult whole = ParseScenario(scenario, {absl::MakeConstSpan(scenario.stream)});
  ASSERT_TRUE(whole.fatal.ok()) << whole.fatal;
  EXPECT_THAT(whole.Descriptions(),
              ElementsAre("hole cookie=1 at=0 length=1000",
                          "status cookie=2 context=1 68719476736/1", "done cookie=2 OK",
                          absl::StrCat("data cookie=1 at=1000 \"", std::string(24, 'q'), "\""),
                          "done cookie=1 OK",
                          ::testing::AllOf(HasSubstr("done cookie=3 DATA_LOSS"),
                                           HasSubstr("(error at offset 256)")),
                          "done cookie=4 OK", "data cookie=5 at=0 \"0123456789abcdef\"",
                          "done cookie=5 OK", HasSubstr("done cookie=6 PERMISSION_DENIED")));
}

// ============================== Steady state does not allocate ==============================

TEST(ReplyParserAllocationTest, FourKibReadsDoNotAllocate) {
  const std::string data(4096, 'p');
  for (ReplyMode mode : {ReplyMode::kSimple, ReplyMode::kStructured, ReplyMode::kExtended}) {
    Bytes reply;
    if (mode == ReplyMode::kSimple) {
      reply = SimpleReply(0, 77, data);
    } else if (mode == ReplyMode::kStructured) {
      reply = Chunk(kDone, Type(ReplyType::kOffsetData), 77, DataPayload(8192, data));
    } else {
      reply = ExtendedChunk(kDone, Type(ReplyType::kOffsetData), 77, 8192, DataPayload(8192, data));
    }
    FakeLookup lookup;
    InflightRequest& request = lookup.Add(77, Command::kRead, 8192, 4096);
    ReplyParserOptions options;
    options.mode = mode;
    ReplyParser parser(options, &lookup);
    size_t data_bytes = 0;
    int done = 0;
    auto run_one = [&]() {
      request.progress.Reset();
      absl::Span<const uint8_t> rest = absl::MakeConstSpan(reply);
      ReplyEvent event;
      while (true) {
        absl::StatusOr<size_t> consumed = parser.Next(rest, &event);
        if (!consumed.ok()) return;
        rest.remove_prefix(*consumed);
        if (event.kind == Kind::kReadData) data_bytes += event.data.size();
        if (event.kind == Kind::kDone && event.status.ok()) ++done;
        if (event.kind == Kind::kNone && *consumed == 0) return;
      }
    };
    run_one();  // warm-up
    g_allocations = 0;
    g_count_allocations = true;
    for (int i = 0; i < 100; ++i) run_one();
    g_count_allocations = false;
    EXPECT_EQ(g_allocations.load(), 0u) << ReplyModeName(mode);
    EXPECT_EQ(done, 101) << ReplyModeName(mode);
    EXPECT_EQ(data_bytes, 101u * 4096) << ReplyModeName(mode);
  }
}

}  // namespace
}  // namespace nbd
