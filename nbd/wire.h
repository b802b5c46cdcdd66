// nbd/wire.h — the NBD protocol's numbers, exactly as they travel on the wire.
//
// Source of truth: NetworkBlockDevice/nbd doc/proto.md. Every value here is transcribed from
// it; names keep the spec's own spelling minus the NBD_ prefix (NBD_CMD_READ is
// Command::kRead). All multi-byte fields are big-endian ("network byte order"); the
// Load/Store helpers at the bottom are the only place that knows that.
//
// This header has no dependencies beyond the standard library so that embedders can include
// it from public headers.
#ifndef NBDRING_NBD_WIRE_H_
#define NBDRING_NBD_WIRE_H_

#include <cstddef>
#include <cstdint>

namespace nbd {

// --- Magics ("Handshake" and "Transmission" sections of proto.md) ---------------------------
inline constexpr uint64_t kInitPasswd = 0x4e42444d41474943ULL;      // "NBDMAGIC"
inline constexpr uint64_t kOldstyleMagic = 0x00420281861253ULL;     // cliserv_magic
inline constexpr uint64_t kIHaveOpt = 0x49484156454F5054ULL;        // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x3e889045565a9ULL;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kExtendedRequestMagic = 0x21e41c71;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
inline constexpr uint32_t kExtendedReplyMagic = 0x6e8a278c;

// --- Handshake flags (server, 16 bits) and client flags (32 bits) -----------------------------
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1 << 1;

// --- Transmission flags (16 bits, sent with the export size) --------------------------------
inline constexpr uint16_t kFlagHasFlags = 1 << 0;
inline constexpr uint16_t kFlagReadOnly = 1 << 1;
inline constexpr uint16_t kFlagSendFlush = 1 << 2;
inline constexpr uint16_t kFlagSendFua = 1 << 3;
inline constexpr uint16_t kFlagRotational = 1 << 4;
inline constexpr uint16_t kFlagSendTrim = 1 << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kFlagSendDf = 1 << 7;
inline constexpr uint16_t kFlagCanMultiConn = 1 << 8;
inline constexpr uint16_t kFlagSendResize = 1 << 9;
inline constexpr uint16_t kFlagSendCache = 1 << 10;
inline constexpr uint16_t kFlagSendFastZero = 1 << 11;
inline constexpr uint16_t kFlagBlockStatusPayload = 1 << 12;

// --- Options (NBD_OPT_*) ---------------------------------------------------------------------
enum class Option : uint32_t {
  kExportName = 1,
  kAbort = 2,
  kList = 3,
  kPeekExport = 4,  // withdrawn; never sent
  kStartTls = 5,
  kInfo = 6,
  kGo = 7,
  kStructuredReply = 8,
  kListMetaContext = 9,
  kSetMetaContext = 10,
  kExtendedHeaders = 11,
};

// --- Option reply types (NBD_REP_*); errors have bit 31 set --------------------------------
inline constexpr uint32_t kRepErrorBit = 1u << 31;
enum class OptionReply : uint32_t {
  kAck = 1,
  kServer = 2,
  kInfo = 3,
  kMetaContext = 4,
  kErrUnsup = kRepErrorBit | 1,
  kErrPolicy = kRepErrorBit | 2,
  kErrInvalid = kRepErrorBit | 3,
  kErrPlatform = kRepErrorBit | 4,
  kErrTlsReqd = kRepErrorBit | 5,
  kErrUnknown = kRepErrorBit | 6,
  kErrShutdown = kRepErrorBit | 7,
  kErrBlockSizeReqd = kRepErrorBit | 8,
  kErrTooBig = kRepErrorBit | 9,
  kErrExtHeaderReqd = kRepErrorBit | 10,
};

// --- NBD_INFO_* (payload of NBD_REP_INFO, requested by NBD_OPT_INFO / NBD_OPT_GO) ------------
enum class InfoType : uint16_t {
  kExport = 0,       // u64 size, u16 transmission flags            (12 bytes with the type)
  kName = 1,         // string
  kDescription = 2,  // string
  kBlockSize = 3,    // u32 minimum, u32 preferred, u32 maximum      (14 bytes with the type)
};

// --- Commands (NBD_CMD_*) ----------------------------------------------------------------------
enum class Command : uint16_t {
  kRead = 0,
  kWrite = 1,
  kDisc = 2,
  kFlush = 3,
  kTrim = 4,
  kCache = 5,
  kWriteZeroes = 6,
  kBlockStatus = 7,
  kResize = 8,
};

// --- Command flags (NBD_CMD_FLAG_*, 16 bits) -------------------------------------------------
inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;
inline constexpr uint16_t kCmdFlagPayloadLen = 1 << 5;  // extended headers only

// --- Error values (NBD_E*): the wire uses these numbers, not the host's errno ---------------
inline constexpr uint32_t kEPerm = 1;
inline constexpr uint32_t kEIo = 5;
inline constexpr uint32_t kENoMem = 12;
inline constexpr uint32_t kEInval = 22;
inline constexpr uint32_t kENoSpc = 28;
inline constexpr uint32_t kEOverflow = 75;
inline constexpr uint32_t kENotSup = 95;
inline constexpr uint32_t kEShutdown = 108;

// --- Structured reply chunks (NBD_REPLY_FLAG_*, NBD_REPLY_TYPE_*) ----------------------------
inline constexpr uint16_t kReplyFlagDone = 1 << 0;
inline constexpr uint16_t kReplyTypeErrorBit = 1 << 15;
enum class ReplyType : uint16_t {
  kNone = 0,
  kOffsetData = 1,
  kOffsetHole = 2,
  kBlockStatus = 5,
  kBlockStatusExt = 6,
  kError = kReplyTypeErrorBit | 1,
  kErrorOffset = kReplyTypeErrorBit | 2,
};

// --- base:allocation status bits (NBD_STATE_*) -----------------------------------------------
inline constexpr uint32_t kStateHole = 1 << 0;
inline constexpr uint32_t kStateZero = 1 << 1;

// --- Sizes of fixed-layout messages ----------------------------------------------------------
inline constexpr size_t kOldstyleGreetingSize = 8 + 8 + 8 + 4 + 124;
inline constexpr size_t kNewstyleGreetingSize = 8 + 8 + 2;
inline constexpr size_t kOptionHeaderSize = 8 + 4 + 4;
inline constexpr size_t kOptionReplyHeaderSize = 8 + 4 + 4 + 4;
inline constexpr size_t kExportNameReplySize = 8 + 2;  // + 124 zero bytes without NO_ZEROES
inline constexpr size_t kExportNameReplyPadding = 124;
inline constexpr size_t kCompactRequestSize = 28;
inline constexpr size_t kExtendedRequestSize = 32;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kStructuredReplyHeaderSize = 20;
inline constexpr size_t kExtendedReplyHeaderSize = 32;

// Strings (names, descriptions, error messages) MUST be at most 4096 bytes ("Conventions").
inline constexpr size_t kMaxStringLength = 4096;
// A request's payload the server need not accept beyond this without NBD_INFO_BLOCK_SIZE
// ("Block size constraints": 32 MiB is the default maximum payload).
inline constexpr uint32_t kDefaultMaxPayload = 32u << 20;
inline constexpr uint16_t kDefaultPort = 10809;

// --- Big-endian field access --------------------------------------------------------------
inline uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t Load32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}
inline uint64_t Load64(const uint8_t* p) { return uint64_t{Load32(p)} << 32 | Load32(p + 4); }
inline void Store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void Store32(uint8_t* p, uint32_t v) {
  Store16(p, static_cast<uint16_t>(v >> 16));
  Store16(p + 2, static_cast<uint16_t>(v));
}
inline void Store64(uint8_t* p, uint64_t v) {
  Store32(p, static_cast<uint32_t>(v >> 32));
  Store32(p + 4, static_cast<uint32_t>(v));
}

// Names for messages and logs ("NBD_CMD_READ"); "unknown" for values outside the spec.
const char* CommandName(Command command);
const char* OptionName(Option option);
const char* OptionReplyName(OptionReply reply);
const char* ReplyTypeName(ReplyType type);

// One block-status extent. `flags` is 32 bits on compact connections, 64 with extended headers.
struct Extent {
  uint64_t length = 0;
  uint64_t flags = 0;
};

}  // namespace nbd

#endif  // NBDRING_NBD_WIRE_H_
