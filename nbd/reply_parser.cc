// nbd/reply_parser.cc — the transmission reply state machine (contract in reply_parser.h).
//
// Rules are those of proto.md ("Simple reply message", "Structured reply chunk message",
// "Structured reply types", NBD_CMD_READ, NBD_CMD_BLOCK_STATUS) plus the 32-byte extended
// header of NBD_OPT_EXTENDED_HEADERS. Two spec facts shape the code below:
//  * NBD_REPLY_TYPE_OFFSET_HOLE keeps its 12-byte payload (32-bit hole size) with extended
//    headers; the 64-bit NBD_REPLY_TYPE_OFFSET_HOLE_EXT (3) was an RFC that was not merged,
//    so type 3 is an unknown type like any other.
//  * With extended headers the server MUST use NBD_REPLY_TYPE_BLOCK_STATUS_EXT, and it MUST
//    NOT use it otherwise.
// Once a request has failed (server error chunk or violation), later content and block status
// chunks are still checked but their payload is no longer reported: the request's buffer is
// of no use to the caller any more.
#include "nbd/reply_parser.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "nbd/errors.h"

namespace nbd {
namespace {

constexpr size_t kMagicSize = 4;
constexpr uint64_t kDataOffsetSize = 8;                 // OFFSET_DATA: u64 offset, then data
constexpr uint64_t kHoleChunkLength = 12;               // OFFSET_HOLE: u64 offset, u32 hole size
constexpr uint64_t kErrorPrefixSize = 6;                // all error chunks: u32 error, u16 length
constexpr uint64_t kErrorOffsetSize = 8;                // ERROR_OFFSET: trailing u64 offset
constexpr uint64_t kBlockStatusPrefixSize = 4;          // u32 context id
constexpr uint64_t kBlockStatusDescriptorSize = 8;      // u32 length, u32 status flags
constexpr uint64_t kBlockStatusExtPrefixSize = 8;       // u32 context id, u32 descriptor count
constexpr uint64_t kBlockStatusExtDescriptorSize = 16;  // u64 length, u64 status flags

bool IsErrorType(uint16_t type) { return (type & kReplyTypeErrorBit) != 0; }

// "NBD_REPLY_TYPE_OFFSET_HOLE", or the number for types the spec does not define.
std::string ChunkTypeName(uint16_t type) {
  switch (static_cast<ReplyType>(type)) {
    case ReplyType::kNone:
    case ReplyType::kOffsetData:
    case ReplyType::kOffsetHole:
    case ReplyType::kBlockStatus:
    case ReplyType::kBlockStatusExt:
    case ReplyType::kError:
    case ReplyType::kErrorOffset:
      return ReplyTypeName(static_cast<ReplyType>(type));
  }
  return absl::StrFormat("unknown chunk type 0x%04x", type);
}

// Names a request in messages: "NBD_CMD_READ at offset 4096 length 512".
std::string RequestContext(const InflightRequest& request) {
  return absl::StrCat(CommandName(request.command), " at offset ", request.offset, " length ",
                      request.length);
}

// A violation that leaves the stream intact but fails `request`.
absl::Status Violation(const InflightRequest& request, absl::string_view detail) {
  return absl::DataLossError(absl::StrCat(RequestContext(request), ": ", detail));
}

// Records [begin, end) in the sorted, merged `progress.covered`; false when it overlaps a
// range already there. In-order chunks only ever extend the single last range.
bool AddCoverage(ReplyProgress& progress, uint64_t begin, uint64_t end) {
  auto& covered = progress.covered;
  auto next = std::lower_bound(
      covered.begin(), covered.end(), begin,
      [](const ReplyProgress::Range& range, uint64_t value) { return range.begin < value; });
  if (next != covered.end() && next->begin < end) return false;
  const bool has_previous = next != covered.begin();
  if (has_previous && std::prev(next)->end > begin) return false;
  const bool merge_previous = has_previous && std::prev(next)->end == begin;
  const bool merge_next = next != covered.end() && next->begin == end;
  if (merge_previous && merge_next) {
    std::prev(next)->end = next->end;
    covered.erase(next);
  } else if (merge_previous) {
    std::prev(next)->end = end;
  } else if (merge_next) {
    next->begin = begin;
  } else {
    covered.insert(next, ReplyProgress::Range{begin, end});
  }
  progress.bytes_covered += end - begin;
  return true;
}

}  // namespace

ReplyParser::ReplyParser(ReplyParserOptions options, RequestLookup* lookup)
    : options_(std::move(options)), lookup_(lookup) {}

absl::StatusOr<size_t> ReplyParser::Next(absl::Span<const uint8_t> input, ReplyEvent* event) {
  *event = ReplyEvent();
  if (!fatal_.ok()) return fatal_;
  size_t consumed = 0;
  while (true) {
    const absl::Span<const uint8_t> rest = input.subspan(consumed);
    switch (state_) {
      case State::kEmitDone:
        EmitDone(event);
        return consumed;

      case State::kHeader: {
        const size_t n = std::min(rest.size(), header_needed_ - header_size_);
        if (n > 0) std::memcpy(header_ + header_size_, rest.data(), n);
        header_size_ += n;
        consumed += n;
        if (header_size_ < header_needed_) return consumed;
        absl::Status status = header_needed_ == kMagicSize ? CheckMagic() : StartMessage();
        if (!status.ok()) return Fatal(std::move(status));
        break;
      }

      case State::kChunkPrefix: {
        const size_t n = std::min(rest.size(), prefix_needed_ - prefix_size_);
        if (n > 0) std::memcpy(prefix_ + prefix_size_, rest.data(), n);
        prefix_size_ += n;
        consumed += n;
        chunk_remaining_ -= n;
        if (prefix_size_ < prefix_needed_) return consumed;
        absl::Status status = FinishPrefix(event);
        if (!status.ok()) return Fatal(std::move(status));
        if (event->kind != ReplyEvent::Kind::kNone) return consumed;
        break;
      }

      case State::kPayload: {
        if (rest.empty()) return consumed;
        const size_t n = static_cast<size_t>(std::min<uint64_t>(rest.size(), chunk_remaining_));
        event->kind = ReplyEvent::Kind::kReadData;
        event->cookie = cookie_;
        event->request = request_;
        event->buffer_offset = payload_offset_;
        event->length = n;
        event->data = rest.subspan(0, n);
        payload_offset_ += n;
        chunk_remaining_ -= n;
        consumed += n;
        if (chunk_remaining_ == 0) FinishChunk();
        return consumed;
      }

      case State::kSkip: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(rest.size(), chunk_remaining_));
        chunk_remaining_ -= n;
        consumed += n;
        if (chunk_remaining_ > 0) return consumed;
        FinishChunk();
        break;
      }

      case State::kBuffered: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(rest.size(), chunk_remaining_));
        buffer_.insert(buffer_.end(), rest.begin(), rest.begin() + n);
        chunk_remaining_ -= n;
        consumed += n;
        if (chunk_remaining_ > 0) return consumed;
        absl::Status status = FinishBuffered(event);
        if (!status.ok()) return Fatal(std::move(status));
        if (event->kind != ReplyEvent::Kind::kNone) return consumed;
        break;
      }
    }
  }
}

bool ReplyParser::payload_target(PayloadTarget* target) const {
  if (state_ != State::kPayload) return false;
  target->request = request_;
  target->cookie = cookie_;
  target->buffer_offset = payload_offset_;
  target->remaining = chunk_remaining_;
  return true;
}

void ReplyParser::PayloadReceivedDirectly(uint64_t n) {
  if (state_ != State::kPayload) return;
  n = std::min(n, chunk_remaining_);
  payload_offset_ += n;
  chunk_remaining_ -= n;
  if (chunk_remaining_ == 0) FinishChunk();
}

bool ReplyParser::at_message_boundary() const {
  // A pending kDone has all of its bytes already; only the event is left to collect.
  return (state_ == State::kHeader && header_size_ == 0) || state_ == State::kEmitDone;
}

absl::Status ReplyParser::Fatal(absl::Status status) {
  fatal_ = std::move(status);
  return fatal_;
}

absl::Status ReplyParser::CheckMagic() {
  const uint32_t magic = Load32(header_);
  const ReplyMode mode = options_.mode;
  switch (magic) {
    case kSimpleReplyMagic:
      if (mode == ReplyMode::kExtended) {
        return absl::DataLossError(absl::StrFormat(
            "simple reply magic 0x%08x received, but extended headers were negotiated", magic));
      }
      header_needed_ = kSimpleReplySize;
      return absl::OkStatus();
    case kStructuredReplyMagic:
      if (mode != ReplyMode::kStructured) {
        return absl::DataLossError(
            absl::StrFormat("structured reply magic 0x%08x received, but the reply mode is %s",
                            magic, ReplyModeName(mode)));
      }
      header_needed_ = kStructuredReplyHeaderSize;
      return absl::OkStatus();
    case kExtendedReplyMagic:
      if (mode != ReplyMode::kExtended) {
        return absl::DataLossError(
            absl::StrFormat("extended reply magic 0x%08x received, but the reply mode is %s", magic,
                            ReplyModeName(mode)));
      }
      header_needed_ = kExtendedReplyHeaderSize;
      return absl::OkStatus();
  }
  return absl::DataLossError(absl::StrFormat("unknown reply magic 0x%08x", magic));
}

absl::Status ReplyParser::StartMessage() {
  const uint32_t magic = Load32(header_);
  header_size_ = 0;
  header_needed_ = kMagicSize;
  if (magic == kSimpleReplyMagic) return StartSimpleReply(Load32(header_ + 4), Load64(header_ + 8));
  const uint16_t flags = Load16(header_ + 4);
  const uint16_t type = Load16(header_ + 6);
  const uint64_t cookie = Load64(header_ + 8);
  if (magic == kStructuredReplyMagic) {
    return StartChunk(flags, type, cookie, /*has_offset=*/false, 0, Load32(header_ + 16));
  }
  return StartChunk(flags, type, cookie, /*has_offset=*/true, Load64(header_ + 16),
                    Load64(header_ + 24));
}

absl::Status ReplyParser::StartSimpleReply(uint32_t error, uint64_t cookie) {
  request_ = lookup_->Find(cookie);
  if (request_ == nullptr) {
    return absl::DataLossError(
        absl::StrCat("simple reply for cookie ", cookie, ", which is not in flight"));
  }
  cookie_ = cookie;
  structured_reply_ = false;
  done_after_chunk_ = true;
  if (options_.mode == ReplyMode::kStructured && request_->command == Command::kRead) {
    // Without a structured reply there is no telling whether read data follows.
    return absl::DataLossError(absl::StrCat(
        "simple reply (error ", error, ") to NBD_CMD_READ with cookie ", cookie,
        ", but structured replies were negotiated and reads must be answered with chunks"));
  }
  if (error != 0) {
    FailRequest(NbdErrorToStatus(error, RequestContext(*request_)));
    state_ = State::kEmitDone;
    return absl::OkStatus();
  }
  if (options_.mode == ReplyMode::kSimple && request_->command == Command::kRead &&
      request_->length > 0) {
    state_ = State::kPayload;
    payload_offset_ = 0;
    chunk_remaining_ = request_->length;
    return absl::OkStatus();
  }
  state_ = State::kEmitDone;
  return absl::OkStatus();
}

absl::Status ReplyParser::StartChunk(uint16_t flags, uint16_t type, uint64_t cookie,
                                     bool has_offset, uint64_t reply_offset, uint64_t length) {
  request_ = lookup_->Find(cookie);
  if (request_ == nullptr) {
    return absl::DataLossError(absl::StrCat(ChunkTypeName(type), " chunk for cookie ", cookie,
                                            ", which is not in flight"));
  }
  cookie_ = cookie;
  chunk_type_ = type;
  chunk_length_ = length;
  chunk_remaining_ = length;
  done_after_chunk_ = (flags & kReplyFlagDone) != 0;
  structured_reply_ = true;
  if (has_offset && reply_offset != request_->offset) {
    FailRequest(Violation(*request_, absl::StrCat("extended reply header offset ", reply_offset,
                                                  " does not match the request offset")));
  }
  const bool extended = options_.mode == ReplyMode::kExtended;
  // Built only for messages: most type names are too long for the small-string buffer.
  auto name = [type] { return ChunkTypeName(type); };
  auto start_buffering = [&]() {
    if (length > options_.max_buffered_chunk_bytes) {
      return absl::DataLossError(
          absl::StrCat(name(), " chunk length ", length, " exceeds the cap of ",
                       options_.max_buffered_chunk_bytes, " bytes on buffered chunks"));
    }
    buffer_.clear();
    state_ = State::kBuffered;
    return absl::OkStatus();
  };
  auto start_prefix = [&](size_t size) {
    prefix_size_ = 0;
    prefix_needed_ = size;
    state_ = State::kChunkPrefix;
  };

  switch (static_cast<ReplyType>(type)) {
    case ReplyType::kNone:
      if (length != 0) {
        return absl::DataLossError(absl::StrCat(name(), " chunk length must be 0, got ", length));
      }
      if (!done_after_chunk_) {
        return absl::DataLossError(
            absl::StrCat(name(), " chunk for cookie ", cookie, " must carry NBD_REPLY_FLAG_DONE"));
      }
      FinishChunk();
      return absl::OkStatus();

    case ReplyType::kOffsetData:
      if (length < kDataOffsetSize + 1) {
        return absl::DataLossError(
            absl::StrCat(name(), " chunk length must be at least 9, got ", length));
      }
      start_prefix(kDataOffsetSize);
      return absl::OkStatus();

    case ReplyType::kOffsetHole:
      if (length != kHoleChunkLength) {
        return absl::DataLossError(absl::StrCat(name(), " chunk length must be 12, got ", length));
      }
      start_prefix(kHoleChunkLength);
      return absl::OkStatus();

    case ReplyType::kBlockStatus:
      if (extended) {
        return absl::DataLossError(
            absl::StrCat(name(),
                         " chunk received, but extended headers were negotiated and require "
                         "NBD_REPLY_TYPE_BLOCK_STATUS_EXT"));
      }
      if (length < kBlockStatusPrefixSize + kBlockStatusDescriptorSize ||
          (length - kBlockStatusPrefixSize) % kBlockStatusDescriptorSize != 0) {
        return absl::DataLossError(absl::StrCat(
            name(), " chunk length must be 4 + a positive multiple of 8, got ", length));
      }
      return start_buffering();

    case ReplyType::kBlockStatusExt:
      if (!extended) {
        return absl::DataLossError(
            absl::StrCat(name(), " chunk received, but extended headers were not negotiated"));
      }
      if (length < kBlockStatusExtPrefixSize + kBlockStatusExtDescriptorSize ||
          (length - kBlockStatusExtPrefixSize) % kBlockStatusExtDescriptorSize != 0) {
        return absl::DataLossError(absl::StrCat(
            name(), " chunk length must be 8 + a positive multiple of 16, got ", length));
      }
      return start_buffering();

    case ReplyType::kError:
    case ReplyType::kErrorOffset: {
      const bool with_offset = static_cast<ReplyType>(type) == ReplyType::kErrorOffset;
      const uint64_t minimum = kErrorPrefixSize + (with_offset ? kErrorOffsetSize : 0);
      if (length < minimum) {
        return absl::DataLossError(
            absl::StrCat(name(), " chunk length must be at least ", minimum, ", got ", length));
      }
      return start_buffering();
    }
  }

  if (!IsErrorType(type)) {
    return absl::DataLossError(absl::StrCat(name(), " without the error bit, for cookie ", cookie));
  }
  // proto.md: an unknown type with bit 15 set fails the request, and the stream goes on.
  if (length < kErrorPrefixSize) {
    FailRequest(Violation(*request_, absl::StrCat(name(), " chunk of length ", length,
                                                  " is too short to carry an error value")));
    SkipRestOfChunk(length);
    return absl::OkStatus();
  }
  start_prefix(kErrorPrefixSize);
  return absl::OkStatus();
}

absl::Status ReplyParser::FinishPrefix(ReplyEvent* event) {
  switch (static_cast<ReplyType>(chunk_type_)) {
    case ReplyType::kOffsetData: {
      const uint64_t offset = Load64(prefix_);
      const uint64_t size = chunk_length_ - kDataOffsetSize;
      uint64_t buffer_offset = 0;
      if (AcceptContent("NBD_REPLY_TYPE_OFFSET_DATA", offset, size, &buffer_offset)) {
        state_ = State::kPayload;
        payload_offset_ = buffer_offset;
        chunk_remaining_ = size;
      } else {
        SkipRestOfChunk(size);
      }
      return absl::OkStatus();
    }

    case ReplyType::kOffsetHole: {
      const uint64_t offset = Load64(prefix_);
      const uint32_t size = Load32(prefix_ + 8);
      uint64_t buffer_offset = 0;
      if (size == 0) {
        FailRequest(Violation(*request_, absl::StrCat("NBD_REPLY_TYPE_OFFSET_HOLE chunk at offset ",
                                                      offset, " has hole size 0")));
      } else if (AcceptContent("NBD_REPLY_TYPE_OFFSET_HOLE", offset, size, &buffer_offset)) {
        event->kind = ReplyEvent::Kind::kReadHole;
        event->cookie = cookie_;
        event->request = request_;
        event->buffer_offset = buffer_offset;
        event->length = size;
      }
      FinishChunk();
      return absl::OkStatus();
    }

    default: {  // an unknown error type: only its error value is understood
      const uint32_t error = Load32(prefix_);
      const uint16_t message_length = Load16(prefix_ + 4);
      if (message_length > chunk_length_ - kErrorPrefixSize) {
        return absl::DataLossError(absl::StrCat(ChunkTypeName(chunk_type_), " message length ",
                                                message_length, " does not fit in chunk length ",
                                                chunk_length_));
      }
      if (error == 0) {
        FailRequest(Violation(
            *request_, absl::StrCat(ChunkTypeName(chunk_type_), " chunk carries error value 0")));
      } else {
        FailRequest(NbdErrorToStatus(
            error, absl::StrCat(RequestContext(*request_), " (", ChunkTypeName(chunk_type_), ")")));
      }
      SkipRestOfChunk(chunk_length_ - kErrorPrefixSize);
      return absl::OkStatus();
    }
  }
}

absl::Status ReplyParser::FinishBuffered(ReplyEvent* event) {
  const ReplyType type = static_cast<ReplyType>(chunk_type_);
  if (type == ReplyType::kError || type == ReplyType::kErrorOffset) return FinishErrorChunk();
  return FinishBlockStatus(event);
}

absl::Status ReplyParser::FinishErrorChunk() {
  const bool with_offset = static_cast<ReplyType>(chunk_type_) == ReplyType::kErrorOffset;
  const std::string name = ChunkTypeName(chunk_type_);
  const uint32_t error = Load32(buffer_.data());
  const uint64_t message_length = Load16(buffer_.data() + 4);
  const uint64_t trailer = with_offset ? kErrorOffsetSize : 0;
  if (message_length > chunk_length_ - kErrorPrefixSize - trailer) {
    return absl::DataLossError(absl::StrCat(name, " message length ", message_length,
                                            " does not fit in chunk length ", chunk_length_));
  }
  if (message_length > kMaxStringLength) {
    return absl::DataLossError(absl::StrCat(name, " message length ", message_length,
                                            " exceeds the string limit of ", kMaxStringLength));
  }
  // The layout leaves no room for anything after the message (and the offset).
  const uint64_t expected = kErrorPrefixSize + message_length + trailer;
  if (chunk_length_ != expected) {
    return absl::DataLossError(absl::StrCat(name, " chunk length ", chunk_length_,
                                            " does not match message length ", message_length,
                                            " (expected ", expected, ")"));
  }
  const absl::string_view message(reinterpret_cast<const char*>(buffer_.data()) + 6,
                                  message_length);
  const InflightRequest& request = *request_;
  if (error == 0) {
    FailRequest(Violation(request, absl::StrCat(name, " chunk carries error value 0: ", message)));
  } else if (with_offset) {
    const uint64_t offset = Load64(buffer_.data() + kErrorPrefixSize + message_length);
    if (offset < request.offset || offset - request.offset >= request.length) {
      FailRequest(
          Violation(request, absl::StrCat(name, " offset ", offset, " lies outside the request")));
    } else {
      FailRequest(NbdErrorToStatus(
          error, absl::StrCat(RequestContext(request), " (error at offset ", offset, ")"),
          message));
    }
  } else {
    FailRequest(NbdErrorToStatus(error, RequestContext(request), message));
  }
  FinishChunk();
  return absl::OkStatus();
}

absl::Status ReplyParser::FinishBlockStatus(ReplyEvent* event) {
  const bool wide = static_cast<ReplyType>(chunk_type_) == ReplyType::kBlockStatusExt;
  const uint8_t* payload = buffer_.data();
  const uint32_t context_id = Load32(payload);
  extents_.clear();
  if (wide) {
    const uint64_t count =
        (chunk_length_ - kBlockStatusExtPrefixSize) / kBlockStatusExtDescriptorSize;
    const uint32_t declared = Load32(payload + 4);
    if (declared != count) {
      return absl::DataLossError(absl::StrCat(ChunkTypeName(chunk_type_), " descriptor count ",
                                              declared, " does not match chunk length ",
                                              chunk_length_, " (", count, " descriptors)"));
    }
    for (const uint8_t* p = payload + kBlockStatusExtPrefixSize; p < payload + chunk_length_;
         p += kBlockStatusExtDescriptorSize) {
      extents_.push_back(Extent{Load64(p), Load64(p + 8)});
    }
  } else {
    for (const uint8_t* p = payload + kBlockStatusPrefixSize; p < payload + chunk_length_;
         p += kBlockStatusDescriptorSize) {
      extents_.push_back(Extent{Load32(p), Load32(p + 4)});
    }
  }
  const bool deliver = AcceptBlockStatus(context_id);
  if (deliver) {
    event->kind = ReplyEvent::Kind::kBlockStatus;
    event->cookie = cookie_;
    event->request = request_;
    event->context_id = context_id;
    event->extents = absl::MakeConstSpan(extents_);
  }
  FinishChunk();
  return absl::OkStatus();
}

bool ReplyParser::AcceptBlockStatus(uint32_t context_id) {
  InflightRequest& request = *request_;
  if (request.command != Command::kBlockStatus) {
    FailRequest(Violation(request, absl::StrCat(ChunkTypeName(chunk_type_),
                                                " chunk is only valid for NBD_CMD_BLOCK_STATUS")));
    return false;
  }
  if (std::find(options_.meta_context_ids.begin(), options_.meta_context_ids.end(), context_id) ==
      options_.meta_context_ids.end()) {
    FailRequest(
        Violation(request, absl::StrCat(ChunkTypeName(chunk_type_), " chunk for meta context id ",
                                        context_id, ", which was not negotiated")));
    return false;
  }
  for (const SeenContext& seen : block_status_seen_) {
    if (seen.cookie == cookie_ && seen.context_id == context_id) {
      FailRequest(Violation(request, absl::StrCat("second ", ChunkTypeName(chunk_type_),
                                                  " chunk for meta context id ", context_id)));
      return false;
    }
  }
  block_status_seen_.push_back(SeenContext{cookie_, context_id});
  ++request.progress.block_status_chunks;

  for (size_t i = 0; i < extents_.size(); ++i) {
    if (extents_[i].length == 0) {
      FailRequest(Violation(request, absl::StrCat("extent ", i, " of meta context id ", context_id,
                                                  " has length 0")));
      return false;
    }
  }
  if ((request.flags & kCmdFlagReqOne) != 0) {
    if (extents_.size() != 1) {
      FailRequest(
          Violation(request, absl::StrCat("NBD_CMD_FLAG_REQ_ONE allows one extent per "
                                          "chunk, got ",
                                          extents_.size(), " for meta context id ", context_id)));
      return false;
    }
    if (extents_[0].length > request.length) {
      FailRequest(
          Violation(request, absl::StrCat("NBD_CMD_FLAG_REQ_ONE extent length ", extents_[0].length,
                                          " exceeds the request length")));
      return false;
    }
  } else {
    // Only the last extent may reach past the requested range (proto.md, BLOCK_STATUS).
    uint64_t sum = 0;
    for (size_t i = 0; i + 1 < extents_.size(); ++i) {
      if (extents_[i].length >= request.length - sum) {
        FailRequest(Violation(
            request, absl::StrCat("extent ", i, " of meta context id ", context_id,
                                  " reaches the end of the request, but only the last extent "
                                  "may")));
        return false;
      }
      sum += extents_[i].length;
    }
  }
  return request.progress.error.ok();
}

bool ReplyParser::AcceptContent(const char* chunk_name, uint64_t offset, uint64_t size,
                                uint64_t* buffer_offset) {
  InflightRequest& request = *request_;
  if (request.command != Command::kRead) {
    FailRequest(
        Violation(request, absl::StrCat(chunk_name, " chunk is only valid for NBD_CMD_READ")));
    return false;
  }
  ++request.progress.content_chunks;
  if ((request.flags & kCmdFlagDf) != 0 && request.progress.content_chunks > 1) {
    FailRequest(
        Violation(request, absl::StrCat("NBD_CMD_FLAG_DF allows one content chunk, got ",
                                        chunk_name, " number ", request.progress.content_chunks)));
    return false;
  }
  // Written so that offset + size cannot wrap around 2^64.
  if (offset < request.offset || size > request.length ||
      offset - request.offset > request.length - size) {
    FailRequest(Violation(request, absl::StrCat(chunk_name, " chunk at offset ", offset, " size ",
                                                size, " lies outside the request")));
    return false;
  }
  const uint64_t begin = offset - request.offset;
  if (!AddCoverage(request.progress, begin, begin + size)) {
    FailRequest(Violation(request, absl::StrCat(chunk_name, " chunk at offset ", offset, " size ",
                                                size, " overlaps an earlier content chunk")));
    return false;
  }
  *buffer_offset = begin;
  return request.progress.error.ok();
}

void ReplyParser::FailRequest(absl::Status status) {
  if (request_->progress.error.ok()) request_->progress.error = std::move(status);
}

void ReplyParser::SkipRestOfChunk(uint64_t bytes) {
  chunk_remaining_ = bytes;
  if (bytes == 0) {
    FinishChunk();
  } else {
    state_ = State::kSkip;
  }
}

void ReplyParser::FinishChunk() {
  if (done_after_chunk_) {
    state_ = State::kEmitDone;
  } else {
    state_ = State::kHeader;
    request_ = nullptr;
  }
}

void ReplyParser::EmitDone(ReplyEvent* event) {
  InflightRequest& request = *request_;
  if (request.progress.error.ok()) {
    if (structured_reply_ && request.command == Command::kRead &&
        request.progress.bytes_covered != request.length) {
      FailRequest(Violation(
          request,
          absl::StrCat("reply did not cover the whole request: ", request.progress.bytes_covered,
                       " of ", request.length, " bytes described by content chunks")));
    } else if (request.command == Command::kBlockStatus &&
               request.progress.block_status_chunks == 0) {
      FailRequest(Violation(request, "successful reply carried no block status chunk"));
    }
  }
  event->kind = ReplyEvent::Kind::kDone;
  event->cookie = cookie_;
  event->request = request_;
  event->status = request.progress.error;
  block_status_seen_.erase(
      std::remove_if(block_status_seen_.begin(), block_status_seen_.end(),
                     [this](const SeenContext& seen) { return seen.cookie == cookie_; }),
      block_status_seen_.end());
  request_ = nullptr;
  state_ = State::kHeader;
}

}  // namespace nbd
