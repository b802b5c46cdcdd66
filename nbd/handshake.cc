// nbd/handshake.cc — see handshake.h for the contract.
//
// Order of options (fixed newstyle), following proto.md's advice:
//   NBD_OPT_STARTTLS first, because a server forgets every option negotiated before it;
//   then the reply format (NBD_OPT_EXTENDED_HEADERS, else NBD_OPT_STRUCTURED_REPLY), because
//   meta contexts and NBD_OPT_LIST_META_CONTEXT need a non-simple format;
//   then NBD_OPT_SET_META_CONTEXT; finally NBD_OPT_GO / NBD_OPT_INFO / NBD_OPT_LIST.
// Only options the goal needs are sent: NBD_OPT_LIST needs none of the others but STARTTLS.
//
// Status codes: a server that breaks the protocol (bad magic, a malformed or unexpected reply,
// a cap exceeded) gives kInternal, as gRPC reports malformed frames; a refusal by the server
// maps its NBD_REP_ERR_* to the closest code (NBD_REP_ERR_UNKNOWN -> kNotFound, ...); options
// the protocol cannot carry (an export name over 4096 bytes) give kInvalidArgument.
#include "nbd/handshake.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace nbd {
namespace {

using Goal = HandshakeOptions::Goal;
using Tls = HandshakeOptions::Tls;

// "Block size constraints" in proto.md.
constexpr uint32_t kNoMaximumBlockSize = 0xffffffff;
constexpr uint32_t kLargestMinimumBlockSize = 1u << 16;
constexpr uint32_t kSmallestPreferredBlockSize = 512;
// The runtime does offset arithmetic in off_t, so larger exports cannot be addressed.
constexpr uint64_t kLargestExportSize = std::numeric_limits<int64_t>::max();
// NBD_INFO_EXPORT: type, size, flags; NBD_INFO_BLOCK_SIZE: type, three sizes.
constexpr size_t kInfoExportLength = 2 + 8 + 2;
constexpr size_t kInfoBlockSizeLength = 2 + 4 + 4 + 4;

constexpr uint32_t ReplyValue(OptionReply reply) { return static_cast<uint32_t>(reply); }

std::string OptionLabel(Option option) {
  absl::string_view name = OptionName(option);
  if (absl::StartsWith(name, "NBD_")) return std::string(name);
  return absl::StrCat("option ", static_cast<uint32_t>(option));
}

std::string ReplyLabel(uint32_t reply) {
  absl::string_view name = OptionReplyName(static_cast<OptionReply>(reply));
  if (absl::StartsWith(name, "NBD_")) return std::string(name);
  return absl::StrFormat("unknown reply type %#x", reply);
}

absl::string_view AsString(absl::Span<const uint8_t> bytes) {
  return absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

bool IsPowerOfTwo(uint32_t value) { return value != 0 && (value & (value - 1)) == 0; }

void Append16(std::vector<uint8_t>* out, uint16_t value) {
  out->resize(out->size() + 2);
  Store16(out->data() + out->size() - 2, value);
}
void Append32(std::vector<uint8_t>* out, uint32_t value) {
  out->resize(out->size() + 4);
  Store32(out->data() + out->size() - 4, value);
}
void Append64(std::vector<uint8_t>* out, uint64_t value) {
  out->resize(out->size() + 8);
  Store64(out->data() + out->size() - 8, value);
}
// A string preceded by its 32-bit length, as in NBD_OPT_GO and NBD_OPT_*_META_CONTEXT.
void AppendLengthAndString(std::vector<uint8_t>* out, absl::string_view text) {
  Append32(out, static_cast<uint32_t>(text.size()));
  out->insert(out->end(), text.begin(), text.end());
}

// NBD_OPT_SET_META_CONTEXT and NBD_OPT_LIST_META_CONTEXT share this layout: export name,
// number of queries, each query.
std::vector<uint8_t> MetaContextOptionData(absl::string_view export_name,
                                           const std::vector<std::string>& queries) {
  std::vector<uint8_t> data;
  AppendLengthAndString(&data, export_name);
  Append32(&data, static_cast<uint32_t>(queries.size()));
  for (const std::string& query : queries) AppendLengthAndString(&data, query);
  return data;
}

// Whether a context the server selected answers one of the queries: the exact name, or a name
// inside a queried namespace ("qemu:" or "qemu:dirty-bitmap:", which servers expand).
bool AnswersAQuery(absl::string_view name, const std::vector<std::string>& queries) {
  for (const std::string& query : queries) {
    if (name == query) return true;
    if (absl::EndsWith(query, ":") && absl::StartsWith(name, query)) return true;
  }
  return false;
}

absl::Status ProtocolError(absl::string_view message) { return absl::InternalError(message); }

absl::Status CheckServerString(absl::string_view what, size_t length) {
  if (length <= kMaxStringLength) return absl::OkStatus();
  return ProtocolError(absl::StrCat(what, " is ", length, " bytes, more than the ",
                                    kMaxStringLength, " bytes proto.md allows for a string"));
}

absl::Status CheckClientString(absl::string_view what, absl::string_view text) {
  if (text.size() > kMaxStringLength) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is ", text.size(),
                                                   " bytes; the protocol allows at most ",
                                                   kMaxStringLength));
  }
  if (text.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " contains a NUL byte, which protocol strings must not"));
  }
  return absl::OkStatus();
}

absl::Status CheckExportSize(uint64_t size) {
  if (size <= kLargestExportSize) return absl::OkStatus();
  return ProtocolError(absl::StrCat("export size ", size, " exceeds INT64_MAX"));
}

// The spec's rules for NBD_INFO_BLOCK_SIZE that do not depend on the export size.
absl::Status CheckBlockSizes(uint32_t minimum, uint32_t preferred, uint32_t maximum) {
  if (!IsPowerOfTwo(minimum) || minimum > kLargestMinimumBlockSize) {
    return ProtocolError(absl::StrCat("NBD_INFO_BLOCK_SIZE minimum block size ", minimum,
                                      " must be a power of 2 no larger than ",
                                      kLargestMinimumBlockSize));
  }
  const uint32_t smallest_preferred = std::max(minimum, kSmallestPreferredBlockSize);
  if (!IsPowerOfTwo(preferred) || preferred < smallest_preferred) {
    return ProtocolError(absl::StrCat("NBD_INFO_BLOCK_SIZE preferred block size ", preferred,
                                      " must be a power of 2 of at least ", smallest_preferred));
  }
  // A maximum of 0 is a multiple of every minimum but allows no request at all.
  if (maximum != kNoMaximumBlockSize && (maximum < minimum || maximum % minimum != 0)) {
    return ProtocolError(absl::StrCat("NBD_INFO_BLOCK_SIZE maximum block size ", maximum,
                                      " must be 0xffffffff or a nonzero multiple of the "
                                      "minimum block size ", minimum));
  }
  return absl::OkStatus();
}

// Why the server refused `option`, as a status whose code fits the refusal.
absl::Status RefusalStatus(Option option, uint32_t reply, absl::string_view export_name,
                           absl::string_view server_message) {
  absl::StatusCode code = absl::StatusCode::kUnknown;
  std::string explanation;
  switch (static_cast<OptionReply>(reply)) {
    case OptionReply::kErrUnsup:
      code = absl::StatusCode::kUnimplemented;
      explanation = absl::StrCat("the server does not support ", OptionLabel(option));
      break;
    case OptionReply::kErrPolicy:
      code = absl::StatusCode::kPermissionDenied;
      explanation = "the server's policy forbids it";
      break;
    case OptionReply::kErrInvalid:
      code = absl::StatusCode::kInvalidArgument;
      explanation = "the server considers the request invalid";
      break;
    case OptionReply::kErrPlatform:
      code = absl::StatusCode::kUnimplemented;
      explanation = "the server's platform does not support it";
      break;
    case OptionReply::kErrTlsReqd:
      code = absl::StatusCode::kFailedPrecondition;
      explanation = "the server requires TLS";
      break;
    case OptionReply::kErrUnknown:
      code = absl::StatusCode::kNotFound;
      explanation = absl::StrCat("export '", export_name, "' is not available");
      break;
    case OptionReply::kErrShutdown:
      code = absl::StatusCode::kUnavailable;
      explanation = "the server is shutting down";
      break;
    case OptionReply::kErrBlockSizeReqd:
      code = absl::StatusCode::kFailedPrecondition;
      explanation = "the server requires the client to request NBD_INFO_BLOCK_SIZE";
      break;
    case OptionReply::kErrTooBig:
      code = absl::StatusCode::kResourceExhausted;
      explanation = "the request or its reply is too large for the server";
      break;
    case OptionReply::kErrExtHeaderReqd:
      code = absl::StatusCode::kFailedPrecondition;
      explanation = "the server requires extended headers";
      break;
    default:
      explanation = "the server gave an error the protocol does not define";
      break;
  }
  std::string message =
      absl::StrCat(OptionLabel(option), " failed with ", ReplyLabel(reply), ": ", explanation);
  if (!server_message.empty()) {
    absl::StrAppend(&message, "; server says: \"",
                    server_message.substr(0, kMaxStringLength), "\"");
  }
  return absl::Status(code, message);
}

}  // namespace

Handshake::Handshake(HandshakeOptions options) : options_(std::move(options)) {
  info_.name = options_.export_name;
  ExpectBytes(Expect::kGreeting, 8 + 8);
  failure_ = CheckClientString("export name", options_.export_name);
  for (const std::string& query : options_.meta_contexts) {
    if (!failure_.ok()) break;
    failure_ = CheckClientString(absl::StrCat("meta context query '", query, "'"), query);
  }
}

Handshake::State Handshake::state() const { return state_; }

absl::Span<const uint8_t> Handshake::output() const {
  return absl::MakeConstSpan(output_).subspan(output_sent_);
}

void Handshake::ConsumeOutput(size_t bytes_sent) {
  output_sent_ = std::min(output_.size(), output_sent_ + bytes_sent);
  if (output_sent_ == output_.size()) {
    output_.clear();
    output_sent_ = 0;
  }
}

size_t Handshake::bytes_wanted() const {
  return state_ == State::kRunning ? unit_size_ - unit_.size() : 0;
}

absl::StatusOr<size_t> Handshake::Feed(absl::Span<const uint8_t> input) {
  if (state_ == State::kFailed) return failure_;
  if (!failure_.ok()) return Fail(failure_);  // unusable options, found by the constructor
  size_t consumed = 0;
  while (state_ == State::kRunning && consumed < input.size()) {
    const size_t take = std::min(unit_size_ - unit_.size(), input.size() - consumed);
    unit_.insert(unit_.end(), input.begin() + consumed, input.begin() + consumed + take);
    consumed += take;
    if (unit_.size() < unit_size_) break;
    // The handler may start collecting the next unit, so it gets the bytes on their own.
    std::vector<uint8_t> unit = std::move(unit_);
    unit_.clear();
    absl::Status status = ProcessUnit(unit);
    if (!status.ok()) return Fail(std::move(status));
  }
  return consumed;
}

void Handshake::TlsEstablished() {
  if (state_ != State::kStartTls) return;
  tls_active_ = true;
  info_.tls = true;
  state_ = State::kRunning;
  absl::Status status = SendNextOption();
  if (!status.ok()) Fail(std::move(status)).IgnoreError();  // the next Feed() returns it
}

absl::Status Handshake::Fail(absl::Status status) {
  state_ = State::kFailed;
  failure_ = status;
  output_.clear();
  output_sent_ = 0;
  return status;
}

void Handshake::ExpectBytes(Expect what, size_t size) {
  expect_ = what;
  unit_size_ = size;
  unit_.clear();
  unit_.reserve(size);
}

void Handshake::AwaitNextReply() {
  ExpectBytes(Expect::kOptionReplyHeader, kOptionReplyHeaderSize);
}

void Handshake::Finish(bool send_abort) {
  // A soft disconnect: proto.md lets the client close without waiting for the ACK.
  if (send_abort) SendOption(Option::kAbort, {});
  state_ = State::kDone;
  unit_size_ = 0;
  unit_.clear();
}

absl::Status Handshake::ProcessUnit(absl::Span<const uint8_t> unit) {
  switch (expect_) {
    case Expect::kGreeting: return OnGreeting(unit);
    case Expect::kOldstyleRest: return OnOldstyleGreeting(unit);
    case Expect::kHandshakeFlags: return OnHandshakeFlags(unit);
    case Expect::kOptionReplyHeader: return OnOptionReplyHeader(unit);
    case Expect::kOptionReplyPayload: return OnOptionReply(pending_reply_, unit);
    case Expect::kExportNameReply: return OnExportNameReply(unit);
  }
  return absl::InternalError("handshake in an impossible state");
}

absl::Status Handshake::OnGreeting(absl::Span<const uint8_t> unit) {
  const uint64_t init_passwd = Load64(unit.data());
  if (init_passwd != kInitPasswd) {
    return ProtocolError(absl::StrFormat(
        "server greeting starts with %#x instead of NBDMAGIC (%#x): not an NBD server",
        init_passwd, kInitPasswd));
  }
  const uint64_t magic = Load64(unit.data() + 8);
  if (magic == kOldstyleMagic) {
    ExpectBytes(Expect::kOldstyleRest, kOldstyleGreetingSize - 16);
    return absl::OkStatus();
  }
  if (magic == kIHaveOpt) {
    ExpectBytes(Expect::kHandshakeFlags, 2);
    return absl::OkStatus();
  }
  return ProtocolError(absl::StrFormat(
      "server greeting magic %#x is neither IHAVEOPT (%#x) nor the oldstyle cliserv_magic (%#x)",
      magic, kIHaveOpt, kOldstyleMagic));
}

absl::Status Handshake::OnOldstyleGreeting(absl::Span<const uint8_t> unit) {
  if (options_.goal != Goal::kTransmission) {
    return absl::FailedPreconditionError(
        "server uses oldstyle negotiation, which has no options, so it can only enter "
        "transmission (no NBD_OPT_INFO, NBD_OPT_LIST or NBD_OPT_LIST_META_CONTEXT)");
  }
  if (options_.tls == Tls::kRequire) {
    return absl::FailedPreconditionError(
        "TLS is required but the server uses oldstyle negotiation, which cannot start TLS");
  }
  const uint64_t size = Load64(unit.data());
  if (absl::Status status = CheckExportSize(size); !status.ok()) return status;
  info_.size = size;
  // The oldstyle flags field is 32 bits; transmission flags are its low 16.
  info_.transmission_flags = static_cast<uint16_t>(Load32(unit.data() + 8) & 0xffff);
  info_.oldstyle = true;
  info_.reply_mode = ReplyMode::kSimple;
  Finish(/*send_abort=*/false);
  return absl::OkStatus();
}

absl::Status Handshake::OnHandshakeFlags(absl::Span<const uint8_t> unit) {
  const uint16_t flags = Load16(unit.data());
  const bool fixed_newstyle = (flags & kFlagFixedNewstyle) != 0;
  no_zeroes_ = (flags & kFlagNoZeroes) != 0;
  if (!fixed_newstyle) {
    if (options_.goal != Goal::kTransmission) {
      return absl::FailedPreconditionError(
          "server does not support fixed newstyle negotiation (NBD_FLAG_FIXED_NEWSTYLE is "
          "clear), so only NBD_OPT_EXPORT_NAME is possible; NBD_OPT_INFO, NBD_OPT_LIST and "
          "NBD_OPT_LIST_META_CONTEXT need it");
    }
    if (options_.tls == Tls::kRequire) {
      return absl::FailedPreconditionError(
          "TLS is required but the server does not support fixed newstyle negotiation, which "
          "NBD_OPT_STARTTLS needs");
    }
  }
  // Unknown server flags are ignored, as proto.md asks; only flags the server offered are set.
  uint32_t client_flags = 0;
  if (fixed_newstyle) client_flags |= kClientFlagFixedNewstyle;
  if (no_zeroes_) client_flags |= kClientFlagNoZeroes;
  Append32(&output_, client_flags);
  if (!fixed_newstyle) {
    SendExportName();
    return absl::OkStatus();
  }
  return SendNextOption();
}

void Handshake::SendOption(Option option, absl::Span<const uint8_t> data) {
  Append64(&output_, kIHaveOpt);
  Append32(&output_, static_cast<uint32_t>(option));
  Append32(&output_, static_cast<uint32_t>(data.size()));
  output_.insert(output_.end(), data.begin(), data.end());
  pending_option_ = option;
  replies_to_pending_option_ = 0;
}

void Handshake::SendExportName() {
  SendOption(Option::kExportName, absl::MakeConstSpan(
                                      reinterpret_cast<const uint8_t*>(options_.export_name.data()),
                                      options_.export_name.size()));
  ExpectBytes(Expect::kExportNameReply,
              kExportNameReplySize + (no_zeroes_ ? 0 : kExportNameReplyPadding));
}

absl::Status Handshake::SendNextOption() {
  const Goal goal = options_.goal;
  // Listing contexts is meaningless without a reply format that can carry block status.
  const bool wants_structured =
      options_.structured_replies || goal == Goal::kListMetaContexts;
  if (options_.tls != Tls::kDisable && !tls_active_ && !starttls_sent_) {
    starttls_sent_ = true;
    SendOption(Option::kStartTls, {});
  } else if (goal == Goal::kList) {
    SendOption(Option::kList, {});
  } else if (wants_structured && options_.extended_headers && !extended_headers_sent_) {
    extended_headers_sent_ = true;
    SendOption(Option::kExtendedHeaders, {});
  } else if (wants_structured && info_.reply_mode == ReplyMode::kSimple &&
             !structured_reply_sent_) {
    structured_reply_sent_ = true;
    SendOption(Option::kStructuredReply, {});
  } else if (goal == Goal::kListMetaContexts) {
    if (info_.reply_mode == ReplyMode::kSimple) {
      return absl::FailedPreconditionError(
          "cannot list meta contexts: the server refused both NBD_OPT_STRUCTURED_REPLY and "
          "NBD_OPT_EXTENDED_HEADERS, and NBD_OPT_LIST_META_CONTEXT needs one of them");
    }
    SendOption(Option::kListMetaContext,
               MetaContextOptionData(options_.export_name, options_.meta_contexts));
  } else if (!options_.meta_contexts.empty() && info_.reply_mode != ReplyMode::kSimple &&
             !set_meta_context_sent_) {
    set_meta_context_sent_ = true;
    SendOption(Option::kSetMetaContext,
               MetaContextOptionData(options_.export_name, options_.meta_contexts));
  } else {
    std::vector<uint8_t> data;
    AppendLengthAndString(&data, options_.export_name);
    std::vector<InfoType> requests = {InfoType::kName, InfoType::kDescription};
    if (options_.request_block_size) requests.push_back(InfoType::kBlockSize);
    Append16(&data, static_cast<uint16_t>(requests.size()));
    for (InfoType request : requests) Append16(&data, static_cast<uint16_t>(request));
    export_info_received_ = false;
    SendOption(goal == Goal::kInfo ? Option::kInfo : Option::kGo, data);
  }
  AwaitNextReply();
  return absl::OkStatus();
}

absl::Status Handshake::OnOptionReplyHeader(absl::Span<const uint8_t> unit) {
  const uint64_t magic = Load64(unit.data());
  if (magic != kOptionReplyMagic) {
    return ProtocolError(absl::StrFormat(
        "option reply magic is %#x, expected %#x, while waiting for a reply to %s", magic,
        kOptionReplyMagic, OptionLabel(pending_option_)));
  }
  const Option option = static_cast<Option>(Load32(unit.data() + 8));
  const uint32_t reply = Load32(unit.data() + 12);
  const uint32_t length = Load32(unit.data() + 16);
  if (option != pending_option_) {
    return ProtocolError(absl::StrCat("server sent ", ReplyLabel(reply), " for ",
                                      OptionLabel(option), " while ",
                                      OptionLabel(pending_option_), " was pending"));
  }
  // Checked before anything is allocated for the payload.
  if (length > options_.max_option_reply_bytes) {
    return ProtocolError(absl::StrCat(ReplyLabel(reply), " to ", OptionLabel(option), " is ",
                                      length, " bytes, more than the limit of ",
                                      options_.max_option_reply_bytes));
  }
  if (++replies_to_pending_option_ > options_.max_replies_per_option) {
    return ProtocolError(absl::StrCat("server sent more than ", options_.max_replies_per_option,
                                      " replies to ", OptionLabel(option)));
  }
  if (length == 0) return OnOptionReply(reply, {});
  pending_reply_ = reply;
  ExpectBytes(Expect::kOptionReplyPayload, length);
  return absl::OkStatus();
}

absl::Status Handshake::OnOptionReply(uint32_t reply, absl::Span<const uint8_t> payload) {
  if ((reply & kRepErrorBit) != 0) return OnErrorReply(reply, payload);
  const bool is_ack = reply == ReplyValue(OptionReply::kAck);
  if (is_ack && !payload.empty()) {
    return ProtocolError(absl::StrCat("NBD_REP_ACK to ", OptionLabel(pending_option_),
                                      " must carry no data, got ", payload.size(), " bytes"));
  }
  auto unexpected = [&] {
    return ProtocolError(absl::StrCat("unexpected ", ReplyLabel(reply), " in reply to ",
                                      OptionLabel(pending_option_)));
  };
  switch (pending_option_) {
    case Option::kStartTls:
      if (!is_ack) return unexpected();
      // The next bytes in both directions are the TLS handshake.
      state_ = State::kStartTls;
      unit_size_ = 0;
      return absl::OkStatus();

    case Option::kExtendedHeaders:
      if (!is_ack) return unexpected();
      info_.reply_mode = ReplyMode::kExtended;
      return SendNextOption();

    case Option::kStructuredReply:
      if (!is_ack) return unexpected();
      info_.reply_mode = ReplyMode::kStructured;
      return SendNextOption();

    case Option::kSetMetaContext:
    case Option::kListMetaContext:
      if (is_ack) {
        if (pending_option_ == Option::kListMetaContext) {
          for (MetaContext& context : offered_contexts_) {
            listed_contexts_.push_back(std::move(context.name));
          }
          offered_contexts_.clear();
          Finish(/*send_abort=*/true);
          return absl::OkStatus();
        }
        info_.meta_contexts = std::move(offered_contexts_);
        offered_contexts_.clear();
        return SendNextOption();
      }
      if (reply != ReplyValue(OptionReply::kMetaContext)) return unexpected();
      if (payload.size() < 4) {
        return ProtocolError(absl::StrCat("NBD_REP_META_CONTEXT reply to ",
                                          OptionLabel(pending_option_),
                                          " must be at least 4 bytes, got ", payload.size()));
      }
      {
        MetaContext context;
        context.id = Load32(payload.data());
        context.name = std::string(AsString(payload.subspan(4)));
        if (absl::Status status = CheckServerString("NBD_REP_META_CONTEXT name",
                                                    context.name.size());
            !status.ok()) {
          return status;
        }
        // Ids are only meaningful (and unique) for contexts selected by SET_META_CONTEXT, and
        // a selected context must answer one of our queries: the runtime decodes block status
        // by what it asked for, so a context it never asked for is a server bug, not a bonus.
        if (pending_option_ == Option::kSetMetaContext) {
          if (!AnswersAQuery(context.name, options_.meta_contexts)) {
            return ProtocolError(absl::StrCat("NBD_OPT_SET_META_CONTEXT: server selected '",
                                              context.name, "', which no query asked for"));
          }
          for (const MetaContext& earlier : offered_contexts_) {
            if (earlier.id == context.id || earlier.name == context.name) {
              return ProtocolError(absl::StrCat(
                  "NBD_OPT_SET_META_CONTEXT: server gave id ", context.id, " to '",
                  context.name, "' after id ", earlier.id, " to '", earlier.name, "'"));
            }
          }
        }
        offered_contexts_.push_back(std::move(context));
      }
      AwaitNextReply();
      return absl::OkStatus();

    case Option::kList:
      if (is_ack) {
        Finish(/*send_abort=*/true);
        return absl::OkStatus();
      }
      if (reply != ReplyValue(OptionReply::kServer)) return unexpected();
      if (payload.size() < 4) {
        return ProtocolError(absl::StrCat(
            "NBD_REP_SERVER reply must be at least 4 bytes, got ", payload.size()));
      }
      {
        const uint32_t name_length = Load32(payload.data());
        if (name_length > payload.size() - 4) {
          return ProtocolError(absl::StrCat("NBD_REP_SERVER name length ", name_length,
                                            " exceeds the ", payload.size() - 4,
                                            " bytes left in the reply"));
        }
        if (absl::Status status = CheckServerString("NBD_REP_SERVER export name", name_length);
            !status.ok()) {
          return status;
        }
        ExportListing listing;
        listing.name = std::string(AsString(payload.subspan(4, name_length)));
        listing.description = std::string(AsString(payload.subspan(4 + name_length)));
        if (absl::Status status = CheckServerString("NBD_REP_SERVER export description",
                                                    listing.description.size());
            !status.ok()) {
          return status;
        }
        exports_.push_back(std::move(listing));
      }
      AwaitNextReply();
      return absl::OkStatus();

    case Option::kGo:
    case Option::kInfo:
      return OnExportInfoReply(reply, payload);

    default:
      return unexpected();
  }
}

absl::Status Handshake::OnExportInfoReply(uint32_t reply, absl::Span<const uint8_t> payload) {
  if (reply == ReplyValue(OptionReply::kInfo)) {
    if (absl::Status status = OnInfo(payload); !status.ok()) return status;
    AwaitNextReply();
    return absl::OkStatus();
  }
  if (reply != ReplyValue(OptionReply::kAck)) {
    return ProtocolError(absl::StrCat("unexpected ", ReplyLabel(reply), " in reply to ",
                                      OptionLabel(pending_option_)));
  }
  if (!export_info_received_) {
    return ProtocolError(absl::StrCat("server acknowledged ", OptionLabel(pending_option_),
                                      " without sending NBD_INFO_EXPORT"));
  }
  const BlockSizeConstraints& block_size = info_.block_size;
  if (block_size.advertised &&
      uint64_t{block_size.maximum} < std::min<uint64_t>(block_size.preferred, info_.size)) {
    return ProtocolError(absl::StrCat(
        "NBD_INFO_BLOCK_SIZE maximum block size ", block_size.maximum,
        " is smaller than both the preferred block size ", block_size.preferred,
        " and the export size ", info_.size));
  }
  Finish(/*send_abort=*/pending_option_ == Option::kInfo);
  return absl::OkStatus();
}

absl::Status Handshake::OnInfo(absl::Span<const uint8_t> payload) {
  if (payload.size() < 2) {
    return ProtocolError(absl::StrCat("NBD_REP_INFO reply to ", OptionLabel(pending_option_),
                                      " must be at least 2 bytes, got ", payload.size()));
  }
  const uint16_t type = Load16(payload.data());
  const absl::Span<const uint8_t> body = payload.subspan(2);
  switch (static_cast<InfoType>(type)) {
    case InfoType::kExport: {
      if (payload.size() != kInfoExportLength) {
        return ProtocolError(absl::StrCat("NBD_INFO_EXPORT length must be ", kInfoExportLength,
                                          ", got ", payload.size()));
      }
      const uint64_t size = Load64(body.data());
      if (absl::Status status = CheckExportSize(size); !status.ok()) return status;
      info_.size = size;
      info_.transmission_flags = Load16(body.data() + 8);
      export_info_received_ = true;
      return absl::OkStatus();
    }
    case InfoType::kName:
    case InfoType::kDescription: {
      const bool is_name = static_cast<InfoType>(type) == InfoType::kName;
      if (absl::Status status = CheckServerString(
              is_name ? "NBD_INFO_NAME" : "NBD_INFO_DESCRIPTION", body.size());
          !status.ok()) {
        return status;
      }
      (is_name ? info_.name : info_.description) = std::string(AsString(body));
      return absl::OkStatus();
    }
    case InfoType::kBlockSize: {
      if (payload.size() != kInfoBlockSizeLength) {
        return ProtocolError(absl::StrCat("NBD_INFO_BLOCK_SIZE length must be ",
                                          kInfoBlockSizeLength, ", got ", payload.size()));
      }
      const uint32_t minimum = Load32(body.data());
      const uint32_t preferred = Load32(body.data() + 4);
      const uint32_t maximum = Load32(body.data() + 8);
      if (absl::Status status = CheckBlockSizes(minimum, preferred, maximum); !status.ok()) {
        return status;
      }
      info_.block_size = {/*advertised=*/true, minimum, preferred, maximum};
      return absl::OkStatus();
    }
  }
  // proto.md: clients MUST ignore information types they do not recognize.
  return absl::OkStatus();
}

absl::Status Handshake::OnErrorReply(uint32_t reply, absl::Span<const uint8_t> payload) {
  const absl::string_view server_message = AsString(payload);
  const Option option = pending_option_;
  auto refusal = [&] {
    return RefusalStatus(option, reply, options_.export_name, server_message);
  };
  // proto.md: on NBD_REP_ERR_SHUTDOWN the client must disconnect. NBD_REP_ERR_TLS_REQD to
  // anything but INFO/GO means no option will succeed without TLS.
  if (reply == ReplyValue(OptionReply::kErrShutdown) ||
      (reply == ReplyValue(OptionReply::kErrTlsReqd) && option != Option::kInfo &&
       option != Option::kGo)) {
    return refusal();
  }
  switch (option) {
    case Option::kStartTls:
      if (options_.tls == Tls::kRequire) {
        absl::Status status = refusal();
        return absl::Status(status.code(),
                            absl::StrCat("TLS is required but ", status.message()));
      }
      return SendNextOption();  // Tls::kAllow: carry on in plain text

    case Option::kExtendedHeaders:    // fall back to structured replies
    case Option::kStructuredReply:    // stay with simple replies
      return SendNextOption();

    case Option::kSetMetaContext:
      // A failed SET_META_CONTEXT leaves no context selected; block status is then unavailable
      // but the export is still usable.
      offered_contexts_.clear();
      info_.meta_contexts.clear();
      return SendNextOption();

    case Option::kGo:
      if (reply == ReplyValue(OptionReply::kErrUnsup)) {
        if (info_.reply_mode == ReplyMode::kExtended) {
          return ProtocolError(
              "server acknowledged NBD_OPT_EXTENDED_HEADERS but does not support NBD_OPT_GO; "
              "NBD_OPT_EXPORT_NAME cannot be used with extended headers");
        }
        // Whatever NBD_REP_INFO came before the refusal describes nothing now.
        info_.name = options_.export_name;
        info_.description.clear();
        info_.size = 0;
        info_.transmission_flags = 0;
        info_.block_size = BlockSizeConstraints();
        SendExportName();
        return absl::OkStatus();
      }
      return refusal();

    default:
      return refusal();
  }
}

absl::Status Handshake::OnExportNameReply(absl::Span<const uint8_t> unit) {
  const uint64_t size = Load64(unit.data());
  if (absl::Status status = CheckExportSize(size); !status.ok()) return status;
  info_.size = size;
  info_.transmission_flags = Load16(unit.data() + 8);
  // The 124 reserved bytes (when sent) carry nothing.
  Finish(/*send_abort=*/false);
  return absl::OkStatus();
}

}  // namespace nbd
