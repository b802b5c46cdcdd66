// Tests of nbd/wire.h: every constant against the number doc/proto.md gives for it (and the
// extended-headers additions as merged into proto.md in 2023), the ASCII meaning of the
// magics, the sizes of the fixed-layout messages as sums of their spec fields, big-endian
// Load/Store, and the names used in messages.
#include "nbd/wire.h"

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbd {
namespace {

using ::testing::ElementsAre;

std::string AsAscii(uint64_t magic) {
  uint8_t bytes[8];
  Store64(bytes, magic);
  return std::string(reinterpret_cast<const char*>(bytes), sizeof bytes);
}

// --- Magics -----------------------------------------------------------------------------------

TEST(WireMagic, AsciiMagicsSpellTheirNames) {
  EXPECT_EQ(AsAscii(kInitPasswd), "NBDMAGIC");
  EXPECT_EQ(AsAscii(kIHaveOpt), "IHAVEOPT");
}

TEST(WireMagic, ValuesFromTheSpec) {
  EXPECT_EQ(kInitPasswd, 0x4e42444d41474943ull);
  EXPECT_EQ(kOldstyleMagic, 0x00420281861253ull);  // cliserv_magic
  EXPECT_EQ(kIHaveOpt, 0x49484156454F5054ull);
  EXPECT_EQ(kOptionReplyMagic, 0x3e889045565a9ull);
  EXPECT_EQ(kRequestMagic, 0x25609513u);          // NBD_REQUEST_MAGIC
  EXPECT_EQ(kExtendedRequestMagic, 0x21e41c71u);  // NBD_EXTENDED_REQUEST_MAGIC
  EXPECT_EQ(kSimpleReplyMagic, 0x67446698u);      // NBD_SIMPLE_REPLY_MAGIC
  EXPECT_EQ(kStructuredReplyMagic, 0x668e33efu);  // NBD_STRUCTURED_REPLY_MAGIC
  EXPECT_EQ(kExtendedReplyMagic, 0x6e8a278cu);    // NBD_EXTENDED_REPLY_MAGIC
}

TEST(WireMagic, MagicsAreDistinctSoAReaderCanTellMessagesApart) {
  const uint32_t magics[] = {kRequestMagic, kExtendedRequestMagic, kSimpleReplyMagic,
                             kStructuredReplyMagic, kExtendedReplyMagic};
  for (size_t i = 0; i < std::size(magics); ++i) {
    for (size_t j = i + 1; j < std::size(magics); ++j) EXPECT_NE(magics[i], magics[j]);
  }
  // proto.md "Reserved Magic values": historic values that must never be reused.
  for (uint32_t magic : magics) {
    EXPECT_NE(magic, 0x12560953u);
    EXPECT_NE(magic, 0x96744668u);
    EXPECT_NE(magic, 0x25609514u);
  }
}

// --- Flags ------------------------------------------------------------------------------------

TEST(WireFlags, HandshakeAndClientFlagBits) {
  EXPECT_EQ(kFlagFixedNewstyle, 1u << 0);
  EXPECT_EQ(kFlagNoZeroes, 1u << 1);
  EXPECT_EQ(kClientFlagFixedNewstyle, 1u << 0);
  EXPECT_EQ(kClientFlagNoZeroes, 1u << 1);
}

TEST(WireFlags, TransmissionFlagBits) {
  const uint16_t in_bit_order[] = {
      kFlagHasFlags,           kFlagReadOnly,   kFlagSendFlush,       kFlagSendFua,
      kFlagRotational,         kFlagSendTrim,   kFlagSendWriteZeroes, kFlagSendDf,
      kFlagCanMultiConn,       kFlagSendResize, kFlagSendCache,       kFlagSendFastZero,
      kFlagBlockStatusPayload,  // NBD_FLAG_BLOCK_STAT_PAYLOAD
  };
  for (size_t bit = 0; bit < std::size(in_bit_order); ++bit) {
    EXPECT_EQ(in_bit_order[bit], 1u << bit) << "transmission flag bit " << bit;
  }
}

TEST(WireFlags, CommandAndReplyFlagBits) {
  const uint16_t in_bit_order[] = {kCmdFlagFua,    kCmdFlagNoHole,   kCmdFlagDf,
                                   kCmdFlagReqOne, kCmdFlagFastZero, kCmdFlagPayloadLen};
  for (size_t bit = 0; bit < std::size(in_bit_order); ++bit) {
    EXPECT_EQ(in_bit_order[bit], 1u << bit) << "command flag bit " << bit;
  }
  EXPECT_EQ(kReplyFlagDone, 1u << 0);
  EXPECT_EQ(kStateHole, 1u << 0);
  EXPECT_EQ(kStateZero, 1u << 1);
}

// --- Enumerations -------------------------------------------------------------------------------

TEST(WireValues, Options) {
  EXPECT_EQ(static_cast<uint32_t>(Option::kExportName), 1u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kAbort), 2u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kList), 3u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kPeekExport), 4u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kStartTls), 5u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kInfo), 6u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kGo), 7u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kStructuredReply), 8u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kListMetaContext), 9u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kSetMetaContext), 10u);
  EXPECT_EQ(static_cast<uint32_t>(Option::kExtendedHeaders), 11u);
}

TEST(WireValues, OptionReplies) {
  EXPECT_EQ(kRepErrorBit, 0x80000000u);
  EXPECT_EQ(static_cast<uint32_t>(OptionReply::kAck), 1u);
  EXPECT_EQ(static_cast<uint32_t>(OptionReply::kServer), 2u);
  EXPECT_EQ(static_cast<uint32_t>(OptionReply::kInfo), 3u);
  EXPECT_EQ(static_cast<uint32_t>(OptionReply::kMetaContext), 4u);
  const OptionReply errors_in_order[] = {
      OptionReply::kErrUnsup,         OptionReply::kErrPolicy,        OptionReply::kErrInvalid,
      OptionReply::kErrPlatform,      OptionReply::kErrTlsReqd,       OptionReply::kErrUnknown,
      OptionReply::kErrShutdown,      OptionReply::kErrBlockSizeReqd, OptionReply::kErrTooBig,
      OptionReply::kErrExtHeaderReqd,
  };
  for (size_t i = 0; i < std::size(errors_in_order); ++i) {
    // proto.md writes these as 2^31 + n.
    EXPECT_EQ(static_cast<uint32_t>(errors_in_order[i]), 2147483648u + (i + 1))
        << OptionReplyName(errors_in_order[i]);
  }
}

TEST(WireValues, InfoTypes) {
  EXPECT_EQ(static_cast<uint16_t>(InfoType::kExport), 0);
  EXPECT_EQ(static_cast<uint16_t>(InfoType::kName), 1);
  EXPECT_EQ(static_cast<uint16_t>(InfoType::kDescription), 2);
  EXPECT_EQ(static_cast<uint16_t>(InfoType::kBlockSize), 3);
}

TEST(WireValues, Commands) {
  const Command in_order[] = {Command::kRead,        Command::kWrite,       Command::kDisc,
                              Command::kFlush,       Command::kTrim,        Command::kCache,
                              Command::kWriteZeroes, Command::kBlockStatus, Command::kResize};
  for (size_t i = 0; i < std::size(in_order); ++i) {
    EXPECT_EQ(static_cast<uint16_t>(in_order[i]), i) << CommandName(in_order[i]);
  }
}

TEST(WireValues, ReplyTypes) {
  EXPECT_EQ(kReplyTypeErrorBit, 0x8000u);
  EXPECT_EQ(static_cast<uint16_t>(ReplyType::kNone), 0);
  EXPECT_EQ(static_cast<uint16_t>(ReplyType::kOffsetData), 1);
  EXPECT_EQ(static_cast<uint16_t>(ReplyType::kOffsetHole), 2);
  EXPECT_EQ(static_cast<uint16_t>(ReplyType::kBlockStatus), 5);
  EXPECT_EQ(static_cast<uint16_t>(ReplyType::kBlockStatusExt), 6);
  EXPECT_EQ(static_cast<uint16_t>(ReplyType::kError), 32768 + 1);        // 2^15 + 1
  EXPECT_EQ(static_cast<uint16_t>(ReplyType::kErrorOffset), 32768 + 2);  // 2^15 + 2
}

TEST(WireValues, ErrorValues) {
  EXPECT_EQ(kEPerm, 1u);
  EXPECT_EQ(kEIo, 5u);
  EXPECT_EQ(kENoMem, 12u);
  EXPECT_EQ(kEInval, 22u);
  EXPECT_EQ(kENoSpc, 28u);
  EXPECT_EQ(kEOverflow, 75u);
  EXPECT_EQ(kENotSup, 95u);
  EXPECT_EQ(kEShutdown, 108u);
}

TEST(WireValues, Limits) {
  EXPECT_EQ(kMaxStringLength, 4096u);
  EXPECT_EQ(kDefaultMaxPayload, 32u * 1024 * 1024);
  EXPECT_EQ(kDefaultPort, 10809);
}

// --- Message sizes, as sums of the spec's field widths in bits -----------------------------

constexpr size_t Bytes(std::initializer_list<size_t> field_bits) {
  size_t total = 0;
  for (size_t bits : field_bits) total += bits / 8;
  return total;
}

TEST(WireSizes, FixedLayoutMessages) {
  // S: magic, cliserv_magic, size, 32-bit flags, 124 bytes of zeroes.
  EXPECT_EQ(kOldstyleGreetingSize, Bytes({64, 64, 64, 32}) + 124);
  // S: NBDMAGIC, IHAVEOPT, handshake flags.
  EXPECT_EQ(kNewstyleGreetingSize, Bytes({64, 64, 16}));
  // C: IHAVEOPT, option, length.
  EXPECT_EQ(kOptionHeaderSize, Bytes({64, 32, 32}));
  // S: reply magic, option, reply type, length.
  EXPECT_EQ(kOptionReplyHeaderSize, Bytes({64, 32, 32, 32}));
  // S: size, transmission flags (then 124 zero bytes unless NO_ZEROES).
  EXPECT_EQ(kExportNameReplySize, Bytes({64, 16}));
  EXPECT_EQ(kExportNameReplyPadding, 124u);
  // C: magic, flags, type, cookie, offset, 32-bit / 64-bit length.
  EXPECT_EQ(kCompactRequestSize, Bytes({32, 16, 16, 64, 64, 32}));
  EXPECT_EQ(kExtendedRequestSize, Bytes({32, 16, 16, 64, 64, 64}));
  // S: magic, error, cookie.
  EXPECT_EQ(kSimpleReplySize, Bytes({32, 32, 64}));
  // S: magic, flags, type, cookie, 32-bit length.
  EXPECT_EQ(kStructuredReplyHeaderSize, Bytes({32, 16, 16, 64, 32}));
  // S: magic, flags, type, cookie, offset, 64-bit length.
  EXPECT_EQ(kExtendedReplyHeaderSize, Bytes({32, 16, 16, 64, 64, 64}));
}

// --- Big-endian access ----------------------------------------------------------------------

TEST(WireByteOrder, StoreWritesMostSignificantByteFirst) {
  uint8_t bytes[8];
  std::memset(bytes, 0xaa, sizeof bytes);
  Store16(bytes, 0x0102);
  EXPECT_THAT(bytes, ElementsAre(0x01, 0x02, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa));
  Store32(bytes, 0x01020304);
  EXPECT_THAT(bytes, ElementsAre(0x01, 0x02, 0x03, 0x04, 0xaa, 0xaa, 0xaa, 0xaa));
  Store64(bytes, 0x0102030405060708);
  EXPECT_THAT(bytes, ElementsAre(0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08));
}

TEST(WireByteOrder, LoadReadsMostSignificantByteFirst) {
  const uint8_t bytes[] = {0xf1, 0xe2, 0xd3, 0xc4, 0xb5, 0xa6, 0x97, 0x88};
  EXPECT_EQ(Load16(bytes), 0xf1e2);
  EXPECT_EQ(Load32(bytes), 0xf1e2d3c4u);
  EXPECT_EQ(Load64(bytes), 0xf1e2d3c4b5a69788ull);
  // High bits set in every byte: nothing is sign-extended on the way.
  EXPECT_EQ(Load16(bytes + 6), 0x9788);
  EXPECT_EQ(Load32(bytes + 4), 0xb5a69788u);
}

TEST(WireByteOrder, RoundTripsBoundaryValues) {
  uint8_t bytes[8];
  for (uint16_t v : {uint16_t{0}, uint16_t{1}, uint16_t{0x00ff}, uint16_t{0xff00}, uint16_t{0x8000},
                     uint16_t{0xffff}}) {
    Store16(bytes, v);
    EXPECT_EQ(Load16(bytes), v);
  }
  for (uint32_t v : {0u, 1u, 0xffu, 0x80000000u, 0x7fffffffu, 0xffffffffu, 0xdeadbeefu}) {
    Store32(bytes, v);
    EXPECT_EQ(Load32(bytes), v);
  }
  for (uint64_t v : {0ull, 1ull, 0xffffffffull, 0x100000000ull, 0x8000000000000000ull,
                     0xffffffffffffffffull, 0x0123456789abcdefull}) {
    Store64(bytes, v);
    EXPECT_EQ(Load64(bytes), v);
  }
}

TEST(WireByteOrder, UnalignedAccess) {
  uint8_t bytes[16] = {};
  Store64(bytes + 3, 0x1122334455667788);
  EXPECT_EQ(bytes[3], 0x11);
  EXPECT_EQ(bytes[10], 0x88);
  EXPECT_EQ(Load64(bytes + 3), 0x1122334455667788ull);
  EXPECT_EQ(Load32(bytes + 5), 0x33445566u);
}

// --- Names ------------------------------------------------------------------------------------

TEST(WireNames, Commands) {
  EXPECT_STREQ(CommandName(Command::kRead), "NBD_CMD_READ");
  EXPECT_STREQ(CommandName(Command::kWrite), "NBD_CMD_WRITE");
  EXPECT_STREQ(CommandName(Command::kDisc), "NBD_CMD_DISC");
  EXPECT_STREQ(CommandName(Command::kFlush), "NBD_CMD_FLUSH");
  EXPECT_STREQ(CommandName(Command::kTrim), "NBD_CMD_TRIM");
  EXPECT_STREQ(CommandName(Command::kCache), "NBD_CMD_CACHE");
  EXPECT_STREQ(CommandName(Command::kWriteZeroes), "NBD_CMD_WRITE_ZEROES");
  EXPECT_STREQ(CommandName(Command::kBlockStatus), "NBD_CMD_BLOCK_STATUS");
  EXPECT_STREQ(CommandName(Command::kResize), "NBD_CMD_RESIZE");
  EXPECT_STREQ(CommandName(static_cast<Command>(9)), "unknown command");
  EXPECT_STREQ(CommandName(static_cast<Command>(0xffff)), "unknown command");
}

TEST(WireNames, Options) {
  EXPECT_STREQ(OptionName(Option::kExportName), "NBD_OPT_EXPORT_NAME");
  EXPECT_STREQ(OptionName(Option::kAbort), "NBD_OPT_ABORT");
  EXPECT_STREQ(OptionName(Option::kList), "NBD_OPT_LIST");
  EXPECT_STREQ(OptionName(Option::kPeekExport), "NBD_OPT_PEEK_EXPORT");
  EXPECT_STREQ(OptionName(Option::kStartTls), "NBD_OPT_STARTTLS");
  EXPECT_STREQ(OptionName(Option::kInfo), "NBD_OPT_INFO");
  EXPECT_STREQ(OptionName(Option::kGo), "NBD_OPT_GO");
  EXPECT_STREQ(OptionName(Option::kStructuredReply), "NBD_OPT_STRUCTURED_REPLY");
  EXPECT_STREQ(OptionName(Option::kListMetaContext), "NBD_OPT_LIST_META_CONTEXT");
  EXPECT_STREQ(OptionName(Option::kSetMetaContext), "NBD_OPT_SET_META_CONTEXT");
  EXPECT_STREQ(OptionName(Option::kExtendedHeaders), "NBD_OPT_EXTENDED_HEADERS");
  EXPECT_STREQ(OptionName(static_cast<Option>(0)), "unknown option");
  EXPECT_STREQ(OptionName(static_cast<Option>(12)), "unknown option");
}

TEST(WireNames, OptionReplies) {
  EXPECT_STREQ(OptionReplyName(OptionReply::kAck), "NBD_REP_ACK");
  EXPECT_STREQ(OptionReplyName(OptionReply::kServer), "NBD_REP_SERVER");
  EXPECT_STREQ(OptionReplyName(OptionReply::kInfo), "NBD_REP_INFO");
  EXPECT_STREQ(OptionReplyName(OptionReply::kMetaContext), "NBD_REP_META_CONTEXT");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrUnsup), "NBD_REP_ERR_UNSUP");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrPolicy), "NBD_REP_ERR_POLICY");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrInvalid), "NBD_REP_ERR_INVALID");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrPlatform), "NBD_REP_ERR_PLATFORM");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrTlsReqd), "NBD_REP_ERR_TLS_REQD");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrUnknown), "NBD_REP_ERR_UNKNOWN");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrShutdown), "NBD_REP_ERR_SHUTDOWN");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrBlockSizeReqd), "NBD_REP_ERR_BLOCK_SIZE_REQD");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrTooBig), "NBD_REP_ERR_TOO_BIG");
  EXPECT_STREQ(OptionReplyName(OptionReply::kErrExtHeaderReqd), "NBD_REP_ERR_EXT_HEADER_REQD");
  EXPECT_STREQ(OptionReplyName(static_cast<OptionReply>(5)), "unknown option reply");
  // Bit 31 alone is not an error the spec defines.
  EXPECT_STREQ(OptionReplyName(static_cast<OptionReply>(kRepErrorBit)), "unknown option reply");
}

TEST(WireNames, ReplyTypes) {
  EXPECT_STREQ(ReplyTypeName(ReplyType::kNone), "NBD_REPLY_TYPE_NONE");
  EXPECT_STREQ(ReplyTypeName(ReplyType::kOffsetData), "NBD_REPLY_TYPE_OFFSET_DATA");
  EXPECT_STREQ(ReplyTypeName(ReplyType::kOffsetHole), "NBD_REPLY_TYPE_OFFSET_HOLE");
  EXPECT_STREQ(ReplyTypeName(ReplyType::kBlockStatus), "NBD_REPLY_TYPE_BLOCK_STATUS");
  EXPECT_STREQ(ReplyTypeName(ReplyType::kBlockStatusExt), "NBD_REPLY_TYPE_BLOCK_STATUS_EXT");
  EXPECT_STREQ(ReplyTypeName(ReplyType::kError), "NBD_REPLY_TYPE_ERROR");
  EXPECT_STREQ(ReplyTypeName(ReplyType::kErrorOffset), "NBD_REPLY_TYPE_ERROR_OFFSET");
  EXPECT_STREQ(ReplyTypeName(static_cast<ReplyType>(3)), "unknown reply type");
  EXPECT_STREQ(ReplyTypeName(static_cast<ReplyType>(kReplyTypeErrorBit | 3)), "unknown reply type");
}

}  // namespace
}  // namespace nbd
