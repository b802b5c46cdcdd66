// The public Client API against servers that misbehave after negotiation.
//
// Every scenario asserts:
//  * the exact outcome of each request (status code and a stable phrase of its message);
//  * that every callback ran exactly once — counted until the client is destroyed, so a late
//    duplicate is caught too;
//  * that a read never wrote outside the caller's buffer (guard bytes on both sides), and, where
//    the server's bytes never belonged in the buffer, not inside it either;
//  * that the client never hangs: request_timeout bounds every request, and a Watchdog aborts
//    the binary if a test outlives its deadline.
// Violations that leave the byte stream intact must fail only their request, and the next
// request on the same connection must succeed; violations that break the framing must fail
// every request in flight with the same error, close the connection, and later requests must
// fail with Unavailable.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/wire.h"
#include "nbdring/client.h"
#include "tests/testing/byte_builder.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/scripted_server.h"

namespace nbd::testing {
namespace {

using ::nbdring::Client;
using ::nbdring::ClientOptions;
using ::nbdring::Operation;
using ::nbdring::testing::CompletionTracker;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

constexpr absl::Duration kRequestTimeout = absl::Seconds(5);
// How long a test waits for a callback: beyond the request timeout, so a request that is never
// completed shows up as a missing callback rather than a timeout of the test.
constexpr absl::Duration kCompletionWait = absl::Seconds(15);
constexpr uint64_t kReadSize = 4096;

// Byte values no read produces (PatternBytes are 1..251; holes are 0).
constexpr uint8_t kGuardByte = 0xFE;
constexpr uint8_t kUntouchedByte = 0xFD;

// A read destination with guard bytes on both sides.
class GuardedBuffer {
 public:
  static constexpr size_t kGuardBytes = 64;
  explicit GuardedBuffer(size_t size) : size_(size), bytes_(size + 2 * kGuardBytes, kGuardByte) {
    std::memset(data(), kUntouchedByte, size_);
  }
  uint8_t* data() { return bytes_.data() + kGuardBytes; }
  size_t size() const { return size_; }
  std::vector<uint8_t> contents() const {
    return std::vector<uint8_t>(bytes_.begin() + kGuardBytes, bytes_.end() - kGuardBytes);
  }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuardBytes; ++i) {
      if (bytes_[i] != kGuardByte || bytes_[bytes_.size() - 1 - i] != kGuardByte) return false;
    }
    return true;
  }
  bool untouched() const {
    std::vector<uint8_t> inside = contents();
    return std::all_of(inside.begin(), inside.end(),
                       [](uint8_t byte) { return byte == kUntouchedByte; });
  }

 private:
  size_t size_;
  std::vector<uint8_t> bytes_;
};

// The zero-allocation path: a caller-owned Operation that records its on_hole calls.
struct TrackedOperation : Operation {
  std::vector<std::pair<uint64_t, uint64_t>> holes;  // on_hole calls: offset, length
};

void OnTrackedHole(Operation* operation, uint64_t offset_in_request, uint64_t length) {
  static_cast<TrackedOperation*>(operation)->holes.emplace_back(offset_in_request, length);
}

void PrepareRead(TrackedOperation* tracked, GuardedBuffer* buffer, uint64_t offset) {
  tracked->command = Command::kRead;
  tracked->offset = offset;
  tracked->length = buffer->size();
  tracked->buffer = buffer->data();
  tracked->on_hole = OnTrackedHole;
}

std::vector<Action> Negotiate(ScriptedExport export_config = {}) {
  return {Greet(), ExpectClientFlags(), HandleOptionsUntilGo(std::move(export_config))};
}

// Concatenates parts of a script.
std::vector<Action> Script(std::initializer_list<std::vector<Action>> parts) {
  std::vector<Action> script;
  for (const std::vector<Action>& part : parts)
    script.insert(script.end(), part.begin(), part.end());
  return script;
}

std::vector<uint8_t> Bytes(size_t count, uint8_t value) {
  return std::vector<uint8_t>(count, value);
}

// Two requests of `command`: the first gets `bad_reply`, the second `good_reply`.
std::vector<Action> BadThenGoodReply(Command command, std::vector<Action> bad_reply,
                                     Action good_reply) {
  return Script({Negotiate(),
                 {ExpectRequest(command)},
                 std::move(bad_reply),
                 {ExpectRequest(command), std::move(good_reply), ExpectDisconnect()}});
}

class TransmissionFaultTest : public ::testing::Test {
 protected:
  std::unique_ptr<Client> Connect(const ScriptedServer& server, ClientOptions options = {}) {
    options.uri = server.uri();
    options.connect_timeout = absl::Seconds(3);
    if (options.request_timeout == absl::ZeroDuration()) options.request_timeout = kRequestTimeout;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Requests are named by small integers chosen by the test. The tracker counts each under an
  // Operation: the caller's own on the zero-allocation path, a stand-in for the callback API.
  Client::Callback For(int id) { return tracker_.Callback(Name(id, &stand_ins_[id])); }
  uint64_t Submit(Client& client, TrackedOperation* operation, int id) {
    Name(id, operation);
    return tracker_.Submit(client, operation);
  }
  const Operation* Name(int id, const Operation* operation) { return names_[id] = operation; }
  // True once request `id` has completed.
  bool Wait(int id) { return tracker_.WaitFor(names_.at(id), kCompletionWait); }
  absl::Status StatusOf(int id) {
    if (tracker_.completions(names_.at(id)) == 0) return absl::UnknownError("callback never ran");
    return tracker_.status(names_.at(id));
  }

  // Reads `buffer->size()` bytes at `offset` as request `id` and waits for the callback.
  absl::Status Read(Client& client, GuardedBuffer* buffer, uint64_t offset, int id) {
    client.Pread(buffer->data(), buffer->size(), offset, For(id));
    if (!Wait(id)) return absl::DeadlineExceededError("read callback never ran");
    return StatusOf(id);
  }

  // Reads into `first` at offset 0 and `second` at 2 * kReadSize as requests 0 and 1, both in
  // flight at once, and waits for both callbacks; false if one never ran.
  bool ReadTwoAtOnce(Client& client, GuardedBuffer* first, GuardedBuffer* second) {
    client.Pread(first->data(), first->size(), 0, For(0));
    client.Pread(second->data(), second->size(), 2 * kReadSize, For(1));
    return tracker_.WaitForAll(kCompletionWait);
  }

  absl::Status Write(Client& client, const std::vector<uint8_t>& data, uint64_t offset, int id) {
    client.Pwrite(data.data(), data.size(), offset, For(id));
    if (!Wait(id)) return absl::DeadlineExceededError("write callback never ran");
    return StatusOf(id);
  }

  // Destroys the client, which must complete everything, then checks that every callback ran
  // exactly once and that the server's script went as written.
  void Finish(std::unique_ptr<Client>* client, ScriptedServer* server) {
    absl::Time start = absl::Now();
    client->reset();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "destroying the client took too long";
    for (const auto& [id, name] : names_) {
      const int calls = tracker_.completions(name);
      EXPECT_EQ(calls, 1) << "callback of request " << id << " ran " << calls << " times";
    }
    EXPECT_TRUE(tracker_.ExactlyOnce());
    absl::Status script = server->Wait();
    EXPECT_TRUE(script.ok()) << script;
  }

  // A violation that leaves the stream intact: the read at offset 0 gets `bad_reply` and must
  // fail with `code` and every phrase; the next read on the same connection must succeed.
  void ExpectOnlyThatReadFails(std::vector<Action> bad_reply, absl::StatusCode code,
                               const std::vector<std::string>& phrases,
                               bool buffer_stays_untouched) {
    ScriptedServer server(
        BadThenGoodReply(Command::kRead, std::move(bad_reply), ReplyReadPattern(1)));
    std::unique_ptr<Client> client = Connect(server);
    ASSERT_NE(client, nullptr);

    GuardedBuffer failed(kReadSize);
    absl::Status status = Read(*client, &failed, 0, 0);
    EXPECT_EQ(status.code(), code) << status;
    for (const std::string& phrase : phrases) {
      EXPECT_THAT(std::string(status.message()), HasSubstr(phrase));
    }
    EXPECT_TRUE(failed.guards_intact()) << "the failed read wrote outside its buffer";
    if (buffer_stays_untouched) {
      EXPECT_TRUE(failed.untouched()) << "bytes that belong to no part of the read were stored";
    }

    GuardedBuffer next(kReadSize);
    status = Read(*client, &next, kReadSize, 1);
    EXPECT_TRUE(status.ok()) << "the connection did not survive: " << status;
    EXPECT_EQ(next.contents(), PatternBytes(kReadSize, kReadSize));
    EXPECT_TRUE(next.guards_intact());
    Finish(&client, &server);
  }

  // The same for a write: the write of 512 bytes at offset 0 gets `bad_reply` and must fail
  // with `code` and every phrase; the next write on the same connection (512 bytes of 0x22 at
  // offset 4096) must succeed. `received`, if given, gets the requests the server recorded.
  void ExpectOnlyThatWriteFails(std::vector<Action> bad_reply, absl::StatusCode code,
                                const std::vector<std::string>& phrases,
                                std::vector<RecordedRequest>* received = nullptr) {
    ScriptedServer server(BadThenGoodReply(Command::kWrite, std::move(bad_reply), ReplyNone(1)));
    std::unique_ptr<Client> client = Connect(server);
    ASSERT_NE(client, nullptr);
    absl::Status status = Write(*client, Bytes(512, 0x11), 0, 0);
    EXPECT_EQ(status.code(), code) << status;
    for (const std::string& phrase : phrases) {
      EXPECT_THAT(std::string(status.message()), HasSubstr(phrase));
    }
    status = Write(*client, Bytes(512, 0x22), 4096, 1);
    EXPECT_TRUE(status.ok()) << "the connection did not survive: " << status;
    Finish(&client, &server);
    if (received != nullptr) *received = server.requests();
  }

  // A violation that breaks the framing: with two reads in flight, the server sends
  // `bad_reply`; both reads must fail with the same kDataLoss status containing `phrase`,
  // the client must close the connection, and a later read must fail with kUnavailable.
  void ExpectConnectionFails(std::vector<Action> bad_reply, const std::string& phrase,
                             ScriptedExport export_config = {}) {
    ScriptedServer server(Script({Negotiate(std::move(export_config)),
                                  {ExpectRequests(2, Command::kRead)},
                                  bad_reply,
                                  {ExpectClose()}}));
    std::unique_ptr<Client> client = Connect(server);
    ASSERT_NE(client, nullptr);

    GuardedBuffer first(kReadSize);
    GuardedBuffer second(kReadSize);
    ASSERT_TRUE(ReadTwoAtOnce(*client, &first, &second)) << "a request in flight never completed";
    for (int id : {0, 1}) {
      absl::Status status = StatusOf(id);
      EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
      EXPECT_THAT(std::string(status.message()), HasSubstr(phrase));
    }
    EXPECT_EQ(StatusOf(0), StatusOf(1));
    EXPECT_TRUE(first.guards_intact());
    EXPECT_TRUE(second.guards_intact());
    // ExpectClose() ends once the client has dropped the connection.
    EXPECT_TRUE(server.Wait(absl::Seconds(10)).ok()) << server.Wait(absl::ZeroDuration());

    GuardedBuffer later(kReadSize);
    absl::Status status = Read(*client, &later, 0, 2);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
    EXPECT_TRUE(later.guards_intact());
    EXPECT_TRUE(later.untouched());
    Finish(&client, &server);
  }

  CompletionTracker tracker_;
  std::map<int, Operation> stand_ins_;
  std::map<int, const Operation*> names_;
  Watchdog watchdog_{::testing::UnitTest::GetInstance()->current_test_info()->name(),
                     absl::Seconds(60)};
};

// --- The connection dies ---------------------------------------------------------------------

TEST_F(TransmissionFaultTest, ServerClosesMidReadPayloadWithEightReadsInFlight) {
  constexpr int kReads = 8;
  constexpr uint64_t kLargeRead = 64 * 1024;  // large enough for the direct-receive path
  ScriptedServer server(Script({Negotiate(),
                                {
                                    ExpectRequests(kReads, Command::kRead),
                                    CutAfter(20 + 8 + 1000),
                                    ReplyReadPattern(0),
                                }}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);

  std::vector<std::unique_ptr<GuardedBuffer>> buffers;
  std::vector<TrackedOperation> operations(kReads);
  for (int i = 0; i < kReads; ++i) {
    buffers.push_back(std::make_unique<GuardedBuffer>(kLargeRead));
    PrepareRead(&operations[i], buffers.back().get(), i * kLargeRead);
    Submit(*client, &operations[i], i);
  }
  ASSERT_TRUE(tracker_.WaitForAll(kCompletionWait)) << "a read in flight never completed";
  for (int i = 0; i < kReads; ++i) {
    absl::Status status = StatusOf(i);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << "read " << i << ": " << status;
    EXPECT_TRUE(buffers[i]->guards_intact()) << "read " << i;
  }

  GuardedBuffer later(kReadSize);
  absl::Status status = Read(*client, &later, 0, kReads);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  Finish(&client, &server);
}

TEST_F(TransmissionFaultTest, ReplyForAnUnknownCookie) {
  constexpr uint64_t kStrangerCookie = 0xDEADBEEFCAFEF00D;
  ExpectConnectionFails(
      {SendRaw(ChunkBytes(kReplyFlagDone, static_cast<uint16_t>(ReplyType::kNone), kStrangerCookie,
                          {}))},
      "NBD_REPLY_TYPE_NONE chunk for cookie 16045690984503111693, which is not in flight");
}

TEST_F(TransmissionFaultTest, DuplicateReplyForACompletedCookie) {
  ScriptedServer server(Script({Negotiate(),
                                {ExpectRequests(2, Command::kRead), ReplyReadPattern(0),
                                 ReplyReadPattern(0), ExpectClose()}}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  GuardedBuffer first(kReadSize);
  GuardedBuffer second(kReadSize);
  ASSERT_TRUE(ReadTwoAtOnce(*client, &first, &second));
  ASSERT_TRUE(server.Wait().ok()) << server.Wait();

  // The read the server answered (twice) succeeded; the other one died with the connection.
  std::vector<RecordedRequest> requests = server.requests();
  ASSERT_EQ(requests.size(), 2u);
  int answered = requests[0].header.offset == 0 ? 0 : 1;
  GuardedBuffer& answered_buffer = answered == 0 ? first : second;
  EXPECT_TRUE(StatusOf(answered).ok()) << StatusOf(answered);
  EXPECT_EQ(answered_buffer.contents(), PatternBytes(requests[0].header.offset, kReadSize));
  absl::Status other = StatusOf(1 - answered);
  EXPECT_EQ(other.code(), absl::StatusCode::kDataLoss) << other;
  EXPECT_THAT(std::string(other.message()),
              HasSubstr(absl::StrCat("NBD_REPLY_TYPE_OFFSET_DATA chunk for cookie ",
                                     requests[0].header.cookie, ", which is not in flight")));
  EXPECT_TRUE(first.guards_intact());
  EXPECT_TRUE(second.guards_intact());
  Finish(&client, &server);
}

TEST_F(TransmissionFaultTest, HoleChunkOfLength13) {
  ExpectConnectionFails(
      {ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kOffsetHole),
                  ByteBuilder().U64(0).U32(kReadSize).U8(0).bytes())},
      "NBD_REPLY_TYPE_OFFSET_HOLE chunk length must be 12, got 13");
}

TEST_F(TransmissionFaultTest, ErrorChunkShorterThanSixBytes) {
  ExpectConnectionFails({ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kError),
                                    ByteBuilder().U32(kEIo).U8(0).bytes())},
                        "NBD_REPLY_TYPE_ERROR chunk length must be at least 6, got 5");
}

TEST_F(TransmissionFaultTest, UnknownChunkTypeWithoutTheErrorBit) {
  ExpectConnectionFails({ReplyChunk(0, kReplyFlagDone, 0x0042, Bytes(4, 1))},
                        "unknown chunk type 0x0042 without the error bit");
}

TEST_F(TransmissionFaultTest, ErrorMessageLongerThan4096Bytes) {
  ExpectConnectionFails(
      {ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kError),
                  ErrorChunkPayload(kEIo, std::string(5000, 'x')))},
      "NBD_REPLY_TYPE_ERROR message length 5000 exceeds the string limit of 4096");
}

TEST_F(TransmissionFaultTest, ErrorMessageLongerThanItsChunk) {
  ExpectConnectionFails({ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kError),
                                    ByteBuilder().U32(kEIo).U16(100).Str("short").bytes())},
                        "NBD_REPLY_TYPE_ERROR message length 100 does not fit in chunk length 11");
}

TEST_F(TransmissionFaultTest, SimpleReplyToReadAfterStructuredRepliesWereNegotiated) {
  ExpectConnectionFails({ReplySimple(0, 0)}, "simple reply (error 0) to NBD_CMD_READ");
}

TEST_F(TransmissionFaultTest, StructuredChunkWhenOnlySimpleRepliesWereNegotiated) {
  ExpectConnectionFails(
      {ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kNone), {})},
      "structured reply magic 0x668e33ef received, but the reply mode is",
      {.structured_replies = false});
}

TEST_F(TransmissionFaultTest, NoneChunkWithoutTheDoneFlag) {
  ExpectConnectionFails({ReplyChunk(0, 0, static_cast<uint16_t>(ReplyType::kNone), {})},
                        "NBD_REPLY_TYPE_NONE chunk for cookie");
}

TEST_F(TransmissionFaultTest, ServerClosesMidWritePayload) {
  constexpr uint64_t kLargeWrite = 4 << 20;  // far more than the socket buffers hold
  ScriptedServer server(
      Script({Negotiate({.size = 16 << 20}), {ExpectRequestHeader(Command::kWrite), Close()}}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  std::vector<uint8_t> first(kLargeWrite, 0x44);
  std::vector<uint8_t> second(kLargeWrite, 0x55);
  client->Pwrite(first.data(), first.size(), 0, For(0));
  client->Pwrite(second.data(), second.size(), kLargeWrite, For(1));
  ASSERT_TRUE(tracker_.WaitForAll(kCompletionWait)) << "a write in flight never completed";
  for (int id : {0, 1}) {
    EXPECT_EQ(StatusOf(id).code(), absl::StatusCode::kUnavailable)
        << StatusOf(id);
  }
  Finish(&client, &server);
}

TEST_F(TransmissionFaultTest, ServerNeverReplies) {
  ScriptedServer server(Script({Negotiate(), {ExpectRequest(Command::kRead), Stall()}}));
  ClientOptions options;
  options.request_timeout = absl::Milliseconds(500);
  std::unique_ptr<Client> client = Connect(server, options);
  ASSERT_NE(client, nullptr);
  GuardedBuffer buffer(kReadSize);
  absl::Time start = absl::Now();
  absl::Status status = Read(*client, &buffer, 0, 0);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4)) << "the request timeout fired late";
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("NBD_CMD_READ at offset 0 length 4096 got no reply within 500 ms"));
  EXPECT_TRUE(buffer.guards_intact());
  EXPECT_TRUE(buffer.untouched());
  Finish(&client, &server);  // Stall() ends when the client has closed the connection
}

// --- One request fails, the connection goes on ----------------------------------------------

TEST_F(TransmissionFaultTest, ReadChunkOutsideTheRequest) {
  ExpectOnlyThatReadFails({ReplyReadPattern(0, kReadSize, 512, /*done=*/true)},
                          absl::StatusCode::kDataLoss,
                          {"NBD_CMD_READ at offset 0 length 4096",
                           "NBD_REPLY_TYPE_OFFSET_DATA chunk at offset 4096 size 512 lies "
                           "outside the request"},
                          /*buffer_stays_untouched=*/true);
}

TEST_F(TransmissionFaultTest, ReadChunkOffsetNearTwoToThe64) {
  ExpectOnlyThatReadFails(
      {ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kOffsetData),
                  ByteBuilder().U64(~uint64_t{0} - 255).Fill(512, 7).bytes())},
      absl::StatusCode::kDataLoss,
      {"NBD_REPLY_TYPE_OFFSET_DATA chunk at offset 18446744073709551360 size 512 lies outside "
       "the request"},
      /*buffer_stays_untouched=*/true);
}

TEST_F(TransmissionFaultTest, OverlappingReadChunks) {
  ExpectOnlyThatReadFails({ReplyReadPattern(0, 0, 2048, /*done=*/false),
                           ReplyReadPattern(0, 1024, 2048, /*done=*/false),
                           ReplyReadPattern(0, 3072, 1024, /*done=*/true)},
                          absl::StatusCode::kDataLoss,
                          {"NBD_REPLY_TYPE_OFFSET_DATA chunk at offset 1024 size 2048 overlaps "
                           "an earlier content chunk"},
                          /*buffer_stays_untouched=*/false);
}

TEST_F(TransmissionFaultTest, ReadChunksNotCoveringTheRequest) {
  ExpectOnlyThatReadFails({ReplyReadPattern(0, 0, 1024, /*done=*/false),
                           ReplyReadPattern(0, 2048, 2048, /*done=*/true)},
                          absl::StatusCode::kDataLoss,
                          {"reply did not cover the whole request: 3072 of 4096 bytes"},
                          /*buffer_stays_untouched=*/false);
}

TEST_F(TransmissionFaultTest, UnknownChunkTypeWithTheErrorBit) {
  ExpectOnlyThatReadFails(
      {ReplyChunk(0, kReplyFlagDone, 0x8042, ErrorChunkPayload(kEIo, "from the future"))},
      absl::StatusCode::kDataLoss, {"NBD_EIO", "unknown chunk type 0x8042"},
      /*buffer_stays_untouched=*/true);
}

TEST_F(TransmissionFaultTest, EioFailsOnlyThatRead) {
  ExpectOnlyThatReadFails(
      {ReplyError(0, kEIo, "medium error on sector 8")}, absl::StatusCode::kDataLoss,
      {"NBD_CMD_READ at offset 0 length 4096", "NBD_EIO", "medium error on sector 8"},
      /*buffer_stays_untouched=*/true);
}

TEST_F(TransmissionFaultTest, ErrorOffsetChunkAmongDataChunks) {
  ExpectOnlyThatReadFails({ReplyReadPattern(0, 0, 2048, /*done=*/false),
                           ReplyChunk(0, 0, static_cast<uint16_t>(ReplyType::kErrorOffset),
                                      ErrorChunkPayload(kEIo, "bad block", /*offset=*/2048)),
                           ReplyReadPattern(0, 2048, 2048, /*done=*/true)},
                          absl::StatusCode::kDataLoss, {"NBD_EIO", "bad block"},
                          /*buffer_stays_untouched=*/false);
}

TEST_F(TransmissionFaultTest, ErrorChunkWithErrorValueZero) {
  ExpectOnlyThatReadFails({ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kError),
                                      ErrorChunkPayload(0, "all is well?"))},
                          absl::StatusCode::kDataLoss,
                          {"NBD_REPLY_TYPE_ERROR chunk carries error value 0"},
                          /*buffer_stays_untouched=*/true);
}

TEST_F(TransmissionFaultTest, ReadDataChunkInReplyToAWrite) {
  ExpectOnlyThatWriteFails(
      {ReplyChunk(0, kReplyFlagDone, static_cast<uint16_t>(ReplyType::kOffsetData),
                  ByteBuilder().U64(0).Fill(8, 1).bytes())},
      absl::StatusCode::kDataLoss,
      {"NBD_REPLY_TYPE_OFFSET_DATA chunk is only valid for NBD_CMD_READ"});
}

TEST_F(TransmissionFaultTest, ReplyBeforeTheWritePayloadWasSent) {
  // A server may answer a write before reading its payload, but the caller's buffer belongs to
  // the client until the callback: the callback must wait until the payload has been sent,
  // which here cannot happen before the server starts reading it.
  constexpr uint64_t kLargeWrite = 4 << 20;
  std::atomic<bool> server_reading_payload{false};
  ScriptedServer server(Script({Negotiate({.size = 16 << 20}),
                                {
                                    ExpectRequestHeader(Command::kWrite),
                                    ReplyError(0, kENoSpc, "no room"),
                                    Sleep(absl::Milliseconds(300)),
                                    Custom("NoteThatThePayloadIsBeingRead",
                                           [&server_reading_payload](ScriptedConnection&) {
                                             server_reading_payload.store(true);
                                             return absl::OkStatus();
                                           }),
                                    ReceiveWritePayload(0),
                                    ExpectDisconnect(),
                                }}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  std::vector<uint8_t> data = PatternBytes(0, kLargeWrite);
  std::atomic<bool> payload_read_before_callback{false};
  client->Pwrite(data.data(), data.size(), 0,
                 [&, done = For(0)](absl::Status status) mutable {
                   payload_read_before_callback.store(server_reading_payload.load());
                   done(std::move(status));
                 });
  ASSERT_TRUE(Wait(0));
  absl::Status status = StatusOf(0);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("no room"));
  EXPECT_TRUE(payload_read_before_callback.load())
      << "the write completed while its payload was still being sent from the caller's buffer";
  Finish(&client, &server);
  std::vector<RecordedRequest> requests = server.requests();
  ASSERT_FALSE(requests.empty());
  EXPECT_TRUE(requests[0].payload == data) << "the payload arrived damaged";
}

TEST_F(TransmissionFaultTest, EnospcFailsOnlyThatWrite) {
  std::vector<RecordedRequest> requests;
  ASSERT_NO_FATAL_FAILURE(ExpectOnlyThatWriteFails(
      {ReplyError(0, kENoSpc, "thin pool exhausted")}, absl::StatusCode::kResourceExhausted,
      {"NBD_ENOSPC", "thin pool exhausted"}, &requests));
  ASSERT_GE(requests.size(), 2u);
  EXPECT_EQ(requests[1].header.offset, 4096u);
  EXPECT_EQ(requests[1].payload, Bytes(512, 0x22));
}

TEST_F(TransmissionFaultTest, EioInSimpleModeFailsOnlyThatRead) {
  ScriptedServer server(
      Script({Negotiate({.structured_replies = false}),
              {ExpectRequest(Command::kRead), ReplyError(0, kEIo), ExpectRequest(Command::kRead),
               ReplyReadPattern(1), ExpectDisconnect()}}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  GuardedBuffer failed(kReadSize);
  absl::Status status = Read(*client, &failed, 0, 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("NBD_EIO"));
  EXPECT_TRUE(failed.guards_intact());
  EXPECT_TRUE(failed.untouched());
  GuardedBuffer next(kReadSize);
  status = Read(*client, &next, 8192, 1);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(next.contents(), PatternBytes(8192, kReadSize));
  Finish(&client, &server);
}

TEST_F(TransmissionFaultTest, EshutdownFailsTheReadAndTheClientDisconnects) {
  // proto.md: "If the client receives an ESHUTDOWN error it MUST initiate a soft disconnect",
  // and the server SHOULD still answer what is in flight.
  ScriptedServer server(Script({Negotiate(),
                                {
                                    ExpectRequests(2, Command::kRead),
                                    ReplyError(0, kEShutdown, "server going down"),
                                    ReplyReadPattern(1),
                                    ExpectDisconnect(),
                                }}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  GuardedBuffer first(kReadSize);
  GuardedBuffer second(kReadSize);
  ASSERT_TRUE(ReadTwoAtOnce(*client, &first, &second));
  // The client is still alive: only its own reaction to ESHUTDOWN can end the script.
  absl::Status script = server.Wait(absl::Seconds(5));
  EXPECT_TRUE(script.ok()) << "no soft disconnect after NBD_ESHUTDOWN: " << script;

  // Either read may have arrived first; the one the server refused is the one that failed.
  int refused = StatusOf(0).ok() ? 1 : 0;
  absl::Status status = StatusOf(refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("NBD_ESHUTDOWN"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("server going down"));
  EXPECT_TRUE(StatusOf(1 - refused).ok()) << StatusOf(1 - refused);
  GuardedBuffer& answered = refused == 0 ? second : first;
  EXPECT_EQ(answered.contents(), PatternBytes(refused == 0 ? 2 * kReadSize : 0, kReadSize));
  EXPECT_TRUE(first.guards_intact());
  EXPECT_TRUE(second.guards_intact());
  Finish(&client, &server);
}

TEST_F(TransmissionFaultTest, BlockStatusForAnUnknownContextId) {
  ScriptedExport export_config{.meta_contexts = {{1, "base:allocation"}}};
  ScriptedServer server(Script({Negotiate(export_config),
                                {
                                    ExpectRequest(Command::kBlockStatus),
                                    ReplyBlockStatus(0, 99, {{kReadSize, 0}}, /*done=*/true),
                                    ExpectRequest(Command::kBlockStatus),
                                    ReplyBlockStatus(1, 1, {{kReadSize, kStateHole | kStateZero}},
                                                     /*done=*/true),
                                    ExpectDisconnect(),
                                }}));
  ClientOptions options;
  options.meta_contexts = {"base:allocation"};
  std::unique_ptr<Client> client = Connect(server, options);
  ASSERT_NE(client, nullptr);

  std::vector<std::pair<uint32_t, std::vector<Extent>>> seen;  // touched only by callbacks
  auto record = [&seen](uint32_t context_id, absl::Span<const Extent> extents) {
    seen.emplace_back(context_id, std::vector<Extent>(extents.begin(), extents.end()));
  };
  client->BlockStatus(kReadSize, 0, record, For(0));
  ASSERT_TRUE(Wait(0));
  absl::Status status = StatusOf(0);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("meta context id 99"));
  EXPECT_TRUE(seen.empty()) << "extents of an unknown context were passed on";

  client->BlockStatus(kReadSize, 0, record, For(1));
  ASSERT_TRUE(Wait(1));
  EXPECT_TRUE(StatusOf(1).ok()) << StatusOf(1);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].first, 1u);
  ASSERT_EQ(seen[0].second.size(), 1u);
  EXPECT_EQ(seen[0].second[0].length, kReadSize);
  EXPECT_EQ(seen[0].second[0].flags, kStateHole | kStateZero);
  Finish(&client, &server);
}

// --- Legal behaviour the client must accept -------------------------------------------------

TEST_F(TransmissionFaultTest, RepliesInReverseOrder) {
  constexpr int kReads = 4;
  constexpr uint64_t kLargeRead = 64 * 1024;
  ScriptedServer server(Script({Negotiate(),
                                {
                                    ExpectRequests(kReads, Command::kRead),
                                    ReplyReadPattern(3),
                                    ReplyReadPattern(2),
                                    ReplyReadPattern(1),
                                    ReplyReadPattern(0),
                                    ExpectDisconnect(),
                                }}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  std::vector<std::unique_ptr<GuardedBuffer>> buffers;
  for (int i = 0; i < kReads; ++i) {
    buffers.push_back(std::make_unique<GuardedBuffer>(kLargeRead));
    client->Pread(buffers[i]->data(), kLargeRead, i * kLargeRead, For(i));
  }
  ASSERT_TRUE(tracker_.WaitForAll(kCompletionWait));
  for (int i = 0; i < kReads; ++i) {
    EXPECT_TRUE(StatusOf(i).ok()) << "read " << i << ": " << StatusOf(i);
    EXPECT_EQ(buffers[i]->contents(), PatternBytes(i * kLargeRead, kLargeRead)) << "read " << i;
    EXPECT_TRUE(buffers[i]->guards_intact());
  }
  Finish(&client, &server);
}

TEST_F(TransmissionFaultTest, EveryByteTrickledOneAtATime) {
  constexpr uint64_t kSmallRead = 600;
  ScriptedServer server({
      Trickle(absl::Microseconds(20)),
      Greet(),
      ExpectClientFlags(),
      HandleOptionsUntilGo(),
      ExpectRequest(Command::kRead),
      ReplyReadPattern(0, 0, 100, /*done=*/false),
      ReplyHole(0, 100, 100, /*done=*/false),
      ReplyReadPattern(0, 200, 400, /*done=*/true),
      ExpectRequest(Command::kWrite),
      ReplyNone(1),
      ExpectRequest(Command::kFlush),
      ReplySimple(2, 0),
      ExpectDisconnect(),
  });
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  GuardedBuffer buffer(kSmallRead);
  absl::Status status = Read(*client, &buffer, 1000, 0);
  ASSERT_TRUE(status.ok()) << status;
  std::vector<uint8_t> expected = PatternBytes(1000, kSmallRead);
  std::fill(expected.begin() + 100, expected.begin() + 200, 0);
  EXPECT_EQ(buffer.contents(), expected);
  EXPECT_TRUE(buffer.guards_intact());
  status = Write(*client, Bytes(300, 0x33), 2000, 1);
  EXPECT_TRUE(status.ok()) << status;
  client->Flush(For(2));
  ASSERT_TRUE(Wait(2));
  EXPECT_TRUE(StatusOf(2).ok()) << StatusOf(2);
  Finish(&client, &server);
}

TEST_F(TransmissionFaultTest, HoleChunksZeroTheBufferAndAreReported) {
  ScriptedServer server(Script({Negotiate(),
                                {
                                    ExpectRequest(Command::kRead),
                                    ReplyHole(0, 1024, 3072, /*done=*/false),
                                    ReplyReadPattern(0, 0, 1024, /*done=*/true),
                                    ExpectDisconnect(),
                                }}));
  std::unique_ptr<Client> client = Connect(server);
  ASSERT_NE(client, nullptr);
  GuardedBuffer buffer(kReadSize);
  TrackedOperation read;
  PrepareRead(&read, &buffer, 8192);
  Submit(*client, &read, 0);
  ASSERT_TRUE(Wait(0));
  EXPECT_TRUE(StatusOf(0).ok()) << StatusOf(0);
  std::vector<uint8_t> expected = PatternBytes(8192, kReadSize);
  std::fill(expected.begin() + 1024, expected.end(), 0);
  EXPECT_EQ(buffer.contents(), expected);
  EXPECT_TRUE(buffer.guards_intact());
  EXPECT_THAT(read.holes, ElementsAre(Pair(1024u, 3072u)));
  Finish(&client, &server);
}

}  // namespace
}  // namespace nbd::testing
