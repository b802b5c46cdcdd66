// Tests of nbd/request.h: compact (28-byte) and extended (32-byte) request headers, byte for
// byte against proto.md's "Request message" layouts, for every command and flag combination;
// DecodeRequest round trips and rejections.
#include "nbd/request.h"

#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/wire.h"
#include "tests/testing/byte_builder.h"

namespace nbd {
namespace {

using ::nbd::testing::ByteBuilder;
using ::testing::ElementsAreArray;

constexpr Command kAllCommands[] = {
    Command::kRead,  Command::kWrite,       Command::kDisc,        Command::kFlush,  Command::kTrim,
    Command::kCache, Command::kWriteZeroes, Command::kBlockStatus, Command::kResize,
};
constexpr uint16_t kAllFlags = kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne |
                               kCmdFlagFastZero | kCmdFlagPayloadLen;

// Encodes into a buffer larger than any header, so writes past the header would show.
std::vector<uint8_t> Encode(const RequestHeader& request, bool extended) {
  std::vector<uint8_t> buffer(48, 0xee);
  const size_t size = EncodeRequest(request, extended, buffer.data());
  EXPECT_EQ(size, extended ? 32u : 28u);
  for (size_t i = size; i < buffer.size(); ++i) {
    EXPECT_EQ(buffer[i], 0xee) << "byte " << i << " written past the header";
  }
  buffer.resize(size);
  return buffer;
}

// proto.md: "C: 32 bits, 0x25609513, magic; C: 16 bits, command flags; C: 16 bits, type;
// C: 64 bits, cookie; C: 64 bits, offset; C: 32 bits, length".
std::vector<uint8_t> SpecCompact(uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset,
                                 uint32_t length) {
  return ByteBuilder().U32(0x25609513).U16(flags).U16(type).U64(cookie).U64(offset).U32(length);
}

// The same with "C: 32 bits, 0x21e41c71, magic" and "C: 64 bits, payload/effect length".
std::vector<uint8_t> SpecExtended(uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset,
                                  uint64_t length) {
  return ByteBuilder().U32(0x21e41c71).U16(flags).U16(type).U64(cookie).U64(offset).U64(length);
}

TEST(EncodeRequest, CompactReadTranscribedFromTheSpec) {
  RequestHeader read;
  read.command = Command::kRead;
  read.cookie = 0x0102030405060708;
  read.offset = 0x1000;
  read.length = 0x200;
  EXPECT_THAT(Encode(read, /*extended=*/false),
              ElementsAreArray<uint8_t>({
                  0x25, 0x60, 0x95, 0x13,                          // NBD_REQUEST_MAGIC
                  0x00, 0x00,                                      // command flags
                  0x00, 0x00,                                      // NBD_CMD_READ
                  0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // cookie
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00,  // offset
                  0x00, 0x00, 0x02, 0x00,                          // length
              }));
}

TEST(EncodeRequest, ExtendedWriteTranscribedFromTheSpec) {
  RequestHeader write;
  write.command = Command::kWrite;
  write.flags = kCmdFlagFua | kCmdFlagPayloadLen;
  write.cookie = 0xfedcba9876543210;
  write.offset = 0x0000000500000000;  // 20 GiB: needs all 64 bits
  write.length = 0x0000000100000000;  // 4 GiB: does not fit a compact header
  EXPECT_THAT(Encode(write, /*extended=*/true),
              ElementsAreArray<uint8_t>({
                  0x21, 0xe4, 0x1c, 0x71,                          // NBD_EXTENDED_REQUEST_MAGIC
                  0x00, 0x21,                                      // FUA | PAYLOAD_LEN
                  0x00, 0x01,                                      // NBD_CMD_WRITE
                  0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,  // cookie
                  0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00,  // offset
                  0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,  // 64-bit length
              }));
}

TEST(EncodeRequest, DisconnectIsAllZeroesAfterTheMagic) {
  RequestHeader disconnect;
  disconnect.command = Command::kDisc;
  EXPECT_THAT(Encode(disconnect, false),
              ElementsAreArray(ByteBuilder().U32(0x25609513).U16(0).U16(2).Zeroes(20).bytes()));
}

TEST(EncodeRequest, EveryCommandAndFlagCombinationMatchesTheSpecLayout) {
  uint64_t seed = 0x9e3779b97f4a7c15;
  for (Command command : kAllCommands) {
    for (uint32_t flags = 0; flags <= kAllFlags; ++flags) {
      // Distinct, all-bytes-nonzero-ish field values per combination.
      seed = seed * 6364136223846793005 + 1442695040888963407;
      RequestHeader request;
      request.command = command;
      request.flags = static_cast<uint16_t>(flags);
      request.cookie = seed;
      request.offset = seed ^ 0x5555555555555555;
      request.length = seed >> 32;  // fits 32 bits for the compact form
      const uint16_t type = static_cast<uint16_t>(command);

      EXPECT_EQ(Encode(request, false),
                SpecCompact(request.flags, type, request.cookie, request.offset,
                            static_cast<uint32_t>(request.length)))
          << CommandName(command) << " flags " << flags;

      request.length = seed ^ 0xaaaaaaaaaaaaaaaa;  // full 64 bits
      EXPECT_EQ(Encode(request, true),
                SpecExtended(request.flags, type, request.cookie, request.offset, request.length))
          << CommandName(command) << " flags " << flags;
    }
  }
}

TEST(EncodeRequest, CompactLengthBoundary) {
  RequestHeader request;
  request.command = Command::kTrim;
  request.length = UINT32_MAX;
  EXPECT_EQ(Encode(request, false), SpecCompact(0, 4, 0, 0, UINT32_MAX));
  request.length = uint64_t{UINT32_MAX} + 1;
  EXPECT_EQ(Encode(request, true), SpecExtended(0, 4, 0, 0, uint64_t{UINT32_MAX} + 1));
}

TEST(EncodeRequest, HeaderSizes) {
  EXPECT_EQ(RequestHeaderSize(false), 28u);
  EXPECT_EQ(RequestHeaderSize(true), 32u);
  static_assert(RequestHeaderSize(true) == kExtendedRequestSize);
}

// --- DecodeRequest ----------------------------------------------------------------------------

void ExpectSameRequest(const RequestHeader& actual, const RequestHeader& expected) {
  EXPECT_EQ(actual.command, expected.command);
  EXPECT_EQ(actual.flags, expected.flags);
  EXPECT_EQ(actual.cookie, expected.cookie);
  EXPECT_EQ(actual.offset, expected.offset);
  EXPECT_EQ(actual.length, expected.length);
}

TEST(DecodeRequest, RoundTripsEveryCommandAndFlagCombination) {
  for (bool extended : {false, true}) {
    for (Command command : kAllCommands) {
      for (uint32_t flags = 0; flags <= kAllFlags; ++flags) {
        RequestHeader request;
        request.command = command;
        request.flags = static_cast<uint16_t>(flags);
        request.cookie = 0x8000000000000001 + flags;
        request.offset = 0xfffffffffffff000 - flags;
        request.length = extended ? 0x123456789a + flags : 0x80000000 + flags;
        const std::vector<uint8_t> bytes = Encode(request, extended);
        RequestHeader decoded;
        ASSERT_TRUE(DecodeRequest(bytes.data(), bytes.size(), extended, &decoded));
        ExpectSameRequest(decoded, request);
      }
    }
  }
}

TEST(DecodeRequest, ReadsTheSpecLayout) {
  const std::vector<uint8_t> compact = SpecCompact(kCmdFlagReqOne, 7, 42, 1 << 20, 65536);
  RequestHeader decoded;
  ASSERT_TRUE(DecodeRequest(compact.data(), compact.size(), false, &decoded));
  EXPECT_EQ(decoded.command, Command::kBlockStatus);
  EXPECT_EQ(decoded.flags, kCmdFlagReqOne);
  EXPECT_EQ(decoded.cookie, 42u);
  EXPECT_EQ(decoded.offset, 1u << 20);
  EXPECT_EQ(decoded.length, 65536u);

  const std::vector<uint8_t> extended =
      SpecExtended(kCmdFlagFastZero | kCmdFlagNoHole, 6, 7, 0, 0x10000000000);
  ASSERT_TRUE(DecodeRequest(extended.data(), extended.size(), true, &decoded));
  EXPECT_EQ(decoded.command, Command::kWriteZeroes);
  EXPECT_EQ(decoded.flags, kCmdFlagFastZero | kCmdFlagNoHole);
  EXPECT_EQ(decoded.length, 0x10000000000u);
}

TEST(DecodeRequest, IgnoresBytesAfterTheHeader) {
  std::vector<uint8_t> bytes = SpecCompact(0, 1, 1, 2, 3);
  bytes.insert(bytes.end(), {0xde, 0xad, 0xbe, 0xef});  // a write's payload
  RequestHeader decoded;
  ASSERT_TRUE(DecodeRequest(bytes.data(), bytes.size(), false, &decoded));
  EXPECT_EQ(decoded.length, 3u);
}

TEST(DecodeRequest, KeepsCommandTypesOutsideTheSpec) {
  // A scripted server must be able to see what a broken client sent.
  const std::vector<uint8_t> bytes = SpecCompact(0x8000, 0xffff, 0, 0, 0);
  RequestHeader decoded;
  ASSERT_TRUE(DecodeRequest(bytes.data(), bytes.size(), false, &decoded));
  EXPECT_EQ(static_cast<uint16_t>(decoded.command), 0xffff);
  EXPECT_EQ(decoded.flags, 0x8000);
}

TEST(DecodeRequest, RejectsShortInput) {
  for (bool extended : {false, true}) {
    const std::vector<uint8_t> bytes =
        extended ? SpecExtended(0, 0, 1, 2, 3) : SpecCompact(0, 0, 1, 2, 3);
    for (size_t size = 0; size < bytes.size(); ++size) {
      RequestHeader decoded;
      EXPECT_FALSE(DecodeRequest(bytes.data(), size, extended, &decoded))
          << (extended ? "extended" : "compact") << " with " << size << " bytes";
    }
  }
}

TEST(DecodeRequest, RejectsTheOtherFormsMagic) {
  RequestHeader decoded;
  // A 32-byte extended header read as compact, and a compact one padded to 32 read as extended.
  const std::vector<uint8_t> extended = SpecExtended(0, 0, 1, 2, 3);
  EXPECT_FALSE(DecodeRequest(extended.data(), extended.size(), false, &decoded));
  std::vector<uint8_t> compact = SpecCompact(0, 0, 1, 2, 3);
  compact.resize(32, 0);
  EXPECT_FALSE(DecodeRequest(compact.data(), compact.size(), true, &decoded));
}

TEST(DecodeRequest, RejectsOtherMagics) {
  RequestHeader decoded;
  for (uint32_t magic : {0u, 0x12560953u /* historic */, 0x25609514u, kSimpleReplyMagic,
                         kStructuredReplyMagic, kExtendedReplyMagic, 0x13956025u}) {
    const std::vector<uint8_t> bytes = ByteBuilder().U32(magic).U16(0).U16(0).U64(1).U64(2).U64(3);
    EXPECT_FALSE(DecodeRequest(bytes.data(), bytes.size(), false, &decoded)) << magic;
    EXPECT_FALSE(DecodeRequest(bytes.data(), bytes.size(), true, &decoded)) << magic;
  }
}

}  // namespace
}  // namespace nbd
