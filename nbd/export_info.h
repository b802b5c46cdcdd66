// nbd/export_info.h — what the handshake learned about an export.
//
// Filled in by nbd::Handshake (fixed newstyle via NBD_OPT_GO/INFO or NBD_OPT_EXPORT_NAME, or
// oldstyle) and read by the runtime to decide what it may send. Plain data: copyable, no I/O.
#ifndef NBDRING_NBD_EXPORT_INFO_H_
#define NBDRING_NBD_EXPORT_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nbd/wire.h"

namespace nbd {

// How replies are framed on this connection, as negotiated.
enum class ReplyMode {
  kSimple,      // 16-byte simple replies only (no NBD_OPT_STRUCTURED_REPLY)
  kStructured,  // NBD_OPT_STRUCTURED_REPLY acknowledged: 20-byte chunk headers
  kExtended,    // NBD_OPT_EXTENDED_HEADERS acknowledged: 32-byte requests and replies
};
const char* ReplyModeName(ReplyMode mode);

// NBD_INFO_BLOCK_SIZE. When the server sends none, the spec's defaults apply: minimum 1
// (512 is only a recommendation for clients that did not ask), preferred 4096, maximum
// payload 32 MiB.
struct BlockSizeConstraints {
  bool advertised = false;
  uint32_t minimum = 1;
  uint32_t preferred = 4096;
  uint32_t maximum = kDefaultMaxPayload;
};

// A meta context the server agreed to (NBD_REP_META_CONTEXT during NBD_OPT_SET_META_CONTEXT).
struct MetaContext {
  uint32_t id = 0;
  std::string name;  // e.g. "base:allocation", "qemu:dirty-bitmap:bitmap0"
};

struct ExportInfo {
  std::string name;         // as requested, or NBD_INFO_NAME when the server sent one
  std::string description;  // NBD_INFO_DESCRIPTION, empty if none
  uint64_t size = 0;
  uint16_t transmission_flags = 0;
  BlockSizeConstraints block_size;
  ReplyMode reply_mode = ReplyMode::kSimple;
  std::vector<MetaContext> meta_contexts;
  bool oldstyle = false;  // the server spoke oldstyle negotiation
  bool tls = false;       // negotiated inside TLS (NBD_OPT_STARTTLS)

  bool has_flag(uint16_t flag) const { return (transmission_flags & flag) != 0; }
  bool read_only() const { return has_flag(kFlagReadOnly); }
  bool can_flush() const { return has_flag(kFlagSendFlush); }
  bool can_fua() const { return has_flag(kFlagSendFua); }
  bool rotational() const { return has_flag(kFlagRotational); }
  bool can_trim() const { return has_flag(kFlagSendTrim); }
  bool can_zero() const { return has_flag(kFlagSendWriteZeroes); }
  bool can_df() const { return has_flag(kFlagSendDf); }
  bool can_multi_conn() const { return has_flag(kFlagCanMultiConn); }
  bool can_resize() const { return has_flag(kFlagSendResize); }
  bool can_cache() const { return has_flag(kFlagSendCache); }
  bool can_fast_zero() const { return has_flag(kFlagSendFastZero); }
  bool can_block_status_payload() const { return has_flag(kFlagBlockStatusPayload); }
  bool structured_replies() const { return reply_mode != ReplyMode::kSimple; }
  bool extended_headers() const { return reply_mode == ReplyMode::kExtended; }
  // The id the server gave `name`, or nullptr when that context was not negotiated.
  const MetaContext* FindMetaContext(const std::string& name) const;
};

// One entry of NBD_OPT_LIST (NBD_REP_SERVER).
struct ExportListing {
  std::string name;
  std::string description;
};

}  // namespace nbd

#endif  // NBDRING_NBD_EXPORT_INFO_H_
