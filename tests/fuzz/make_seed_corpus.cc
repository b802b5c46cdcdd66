// tests/fuzz/make_seed_corpus.cc — writes the hand-built seed corpora of the fuzzers:
//   make_seed_corpus DIR   ->  DIR/handshake/seed-*  and  DIR/reply_parser/seed-*
//
// Handshake seeds are whole, valid sessions: a small scripted server answers whatever options
// nbd::Handshake sends (so the seeds follow the client's real option order), in several server
// personalities (modern, pre-NBD_OPT_GO, oldstyle, refusing). Reply parser seeds are reply
// streams written field by field from proto.md's layouts. Both use the input layouts
// documented at the top of handshake_fuzzer.cc and reply_parser_fuzzer.cc.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nbd/handshake.h"
#include "nbd/wire.h"
#include "tests/testing/byte_builder.h"

namespace {

using nbd::Option;
using nbd::OptionReply;
using nbd::testing::ByteBuilder;

void WriteSeed(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  if (!file) {
    std::fprintf(stderr, "make_seed_corpus: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

// --- Handshake -------------------------------------------------------------------------------

struct Personality {
  const char* name;
  bool oldstyle = false;
  bool no_zeroes = true;        // offers NBD_FLAG_NO_ZEROES
  bool go = true;               // NBD_OPT_GO / NBD_OPT_INFO
  bool structured = true;       // NBD_OPT_STRUCTURED_REPLY
  bool extended = true;         // NBD_OPT_EXTENDED_HEADERS
  bool meta_contexts = true;    // NBD_OPT_SET/LIST_META_CONTEXT
  bool starttls = true;         // NBD_OPT_STARTTLS
  bool unknown_export = false;  // NBD_OPT_GO/INFO answered NBD_REP_ERR_UNKNOWN
};

constexpr uint64_t kExportSize = 1ull << 30;

// Answers the client's options the way `personality` would, recording every server byte.
class ScriptedServer {
 public:
  explicit ScriptedServer(const Personality& personality) : personality_(personality) {
    if (personality_.oldstyle) {
      out_.U64(nbd::kInitPasswd)
          .U64(nbd::kOldstyleMagic)
          .U64(kExportSize)
          .U32(TransmissionFlags())
          .Zeroes(124);
      return;
    }
    out_.U64(nbd::kInitPasswd)
        .U64(nbd::kIHaveOpt)
        .U16(nbd::kFlagFixedNewstyle | (personality_.no_zeroes ? nbd::kFlagNoZeroes : 0));
  }

  // Takes client bytes and appends any replies they complete.
  void FromClient(absl::Span<const uint8_t> bytes) {
    in_.insert(in_.end(), bytes.begin(), bytes.end());
    while (!personality_.oldstyle && !transmission_) {
      if (!client_flags_seen_) {
        if (in_.size() < 4) return;
        client_no_zeroes_ = (nbd::Load32(in_.data()) & nbd::kClientFlagNoZeroes) != 0;
        in_.erase(in_.begin(), in_.begin() + 4);
        client_flags_seen_ = true;
        continue;
      }
      if (in_.size() < nbd::kOptionHeaderSize) return;
      const uint32_t length = nbd::Load32(in_.data() + 12);
      if (in_.size() < nbd::kOptionHeaderSize + length) return;
      const auto option = static_cast<Option>(nbd::Load32(in_.data() + 8));
      const std::vector<uint8_t> data(in_.begin() + nbd::kOptionHeaderSize,
                                      in_.begin() + nbd::kOptionHeaderSize + length);
      in_.erase(in_.begin(), in_.begin() + nbd::kOptionHeaderSize + length);
      Answer(option, data);
    }
  }

  const std::vector<uint8_t>& bytes() const { return out_.bytes(); }

 private:
  uint16_t TransmissionFlags() const {
    uint16_t flags = nbd::kFlagHasFlags | nbd::kFlagSendFlush | nbd::kFlagSendFua |
                     nbd::kFlagSendTrim | nbd::kFlagSendWriteZeroes | nbd::kFlagCanMultiConn |
                     nbd::kFlagSendCache | nbd::kFlagSendFastZero;
    if (structured_) flags |= nbd::kFlagSendDf;
    if (extended_) flags |= nbd::kFlagBlockStatusPayload;
    return flags;
  }

  void Reply(Option option, OptionReply type, const std::vector<uint8_t>& payload = {}) {
    out_.U64(nbd::kOptionReplyMagic)
        .U32(static_cast<uint32_t>(option))
        .U32(static_cast<uint32_t>(type))
        .U32(static_cast<uint32_t>(payload.size()))
        .Bytes(payload);
  }
  void Unsupported(Option option) {
    Reply(option, OptionReply::kErrUnsup, ByteBuilder().Str("not supported here"));
  }

  // The queries of NBD_OPT_{SET,LIST}_META_CONTEXT: u32 name length, name, u32 count, queries.
  static std::vector<std::string> MetaQueries(const std::vector<uint8_t>& data) {
    std::vector<std::string> queries;
    if (data.size() < 4) return queries;
    size_t at = 4 + nbd::Load32(data.data());
    if (data.size() < at + 4) return queries;
    const uint32_t count = nbd::Load32(data.data() + at);
    at += 4;
    for (uint32_t i = 0; i < count && data.size() >= at + 4; ++i) {
      const uint32_t length = nbd::Load32(data.data() + at);
      at += 4;
      if (data.size() < at + length) break;
      queries.emplace_back(reinterpret_cast<const char*>(data.data() + at), length);
      at += length;
    }
    return queries;
  }

  void Answer(Option option, const std::vector<uint8_t>& data) {
    switch (option) {
      case Option::kStartTls:
        if (!personality_.starttls) return Unsupported(option);
        return Reply(option, OptionReply::kAck);
      case Option::kStructuredReply:
        if (!personality_.structured) return Unsupported(option);
        structured_ = true;
        return Reply(option, OptionReply::kAck);
      case Option::kExtendedHeaders:
        if (!personality_.extended) return Unsupported(option);
        structured_ = extended_ = true;
        return Reply(option, OptionReply::kAck);
      case Option::kSetMetaContext:
      case Option::kListMetaContext: {
        if (!personality_.meta_contexts) return Unsupported(option);
        uint32_t id = 1;
        for (const std::string& query : MetaQueries(data)) {
          Reply(option, OptionReply::kMetaContext,
                ByteBuilder().U32(option == Option::kSetMetaContext ? id++ : 0).Str(query));
        }
        return Reply(option, OptionReply::kAck);
      }
      case Option::kList:
        Reply(option, OptionReply::kServer, ByteBuilder().U32(4).Str("disk").Str("the disk"));
        Reply(option, OptionReply::kServer, ByteBuilder().U32(0));
        return Reply(option, OptionReply::kAck);
      case Option::kInfo:
      case Option::kGo:
        if (!personality_.go) return Unsupported(option);
        if (personality_.unknown_export) {
          return Reply(option, OptionReply::kErrUnknown, ByteBuilder().Str("no such export"));
        }
        Reply(option, OptionReply::kInfo,
              ByteBuilder().U16(0).U64(kExportSize).U16(TransmissionFlags()));
        Reply(option, OptionReply::kInfo, ByteBuilder().U16(3).U32(1).U32(4096).U32(32 << 20));
        Reply(option, OptionReply::kInfo, ByteBuilder().U16(1).Str("disk"));
        Reply(option, OptionReply::kInfo, ByteBuilder().U16(2).Str("a test disk"));
        Reply(option, OptionReply::kAck);
        if (option == Option::kGo) transmission_ = true;
        return;
      case Option::kExportName:
        out_.U64(kExportSize).U16(TransmissionFlags());
        if (!client_no_zeroes_) out_.Zeroes(nbd::kExportNameReplyPadding);
        transmission_ = true;
        return;
      case Option::kAbort:
        return Reply(option, OptionReply::kAck);
      default:
        return Unsupported(option);
    }
  }

  Personality personality_;
  ByteBuilder out_;
  std::vector<uint8_t> in_;
  bool client_flags_seen_ = false;
  bool client_no_zeroes_ = false;
  bool structured_ = false;
  bool extended_ = false;
  bool transmission_ = false;
};

// Runs nbd::Handshake (configured from `config` as handshake_fuzzer.cc does) against the
// scripted server and returns the fuzzer input: the two config bytes, then the server bytes.
std::vector<uint8_t> HandshakeSession(uint8_t config0, uint8_t config1,
                                      const Personality& personality) {
  static const char* const kMetaContexts[] = {"base:allocation", "qemu:dirty-bitmap:bitmap0",
                                              "qemu:allocation-depth"};
  nbd::HandshakeOptions options;
  options.goal = static_cast<nbd::HandshakeOptions::Goal>(config0 & 3);
  options.structured_replies = (config0 & 4) != 0;
  options.extended_headers = (config0 & 8) != 0;
  for (int i = 0; i < ((config0 >> 4) & 3); ++i) options.meta_contexts.push_back(kMetaContexts[i]);
  const int tls = config0 >> 6;
  options.tls = tls == 0   ? nbd::HandshakeOptions::Tls::kDisable
                : tls == 2 ? nbd::HandshakeOptions::Tls::kRequire
                           : nbd::HandshakeOptions::Tls::kAllow;
  options.request_block_size = (config1 & 1) != 0;
  options.export_name = ((config1 >> 2) & 3) == 1 ? "disk" : "";

  ScriptedServer server(personality);
  nbd::Handshake handshake(options);
  size_t fed = 0;
  for (int round = 0; round < 1000; ++round) {
    if (handshake.state() == nbd::Handshake::State::kStartTls) {
      handshake.TlsEstablished();
      continue;
    }
    server.FromClient(handshake.output());
    handshake.ConsumeOutput(handshake.output().size());
    if (handshake.state() != nbd::Handshake::State::kRunning) break;
    if (fed == server.bytes().size()) break;  // the server has nothing more to say
    const absl::StatusOr<size_t> consumed =
        handshake.Feed(absl::MakeConstSpan(server.bytes()).subspan(fed));
    if (!consumed.ok()) {
      // Expected of the refusing personalities; the seed still covers the failure path.
      std::fprintf(stderr, "make_seed_corpus: the session with the %s server ends in: %s\n",
                   personality.name, std::string(consumed.status().message()).c_str());
      break;
    }
    fed += *consumed;
  }
  if (handshake.state() == nbd::Handshake::State::kRunning) {
    std::fprintf(stderr, "make_seed_corpus: the session with the %s server stalled\n",
                 personality.name);
  }
  std::vector<uint8_t> input = {config0, config1};
  input.insert(input.end(), server.bytes().begin(), server.bytes().end());
  return input;
}

void WriteHandshakeSeeds(const std::filesystem::path& dir) {
  Personality modern{"modern"};
  Personality zeroes{"zeroes"};
  zeroes.no_zeroes = false;
  Personality pre_go{"pre-go"};
  pre_go.go = pre_go.structured = pre_go.extended = pre_go.meta_contexts = pre_go.starttls = false;
  Personality pre_go_zeroes = pre_go;
  pre_go_zeroes.name = "pre-go-zeroes";
  pre_go_zeroes.no_zeroes = false;
  Personality structured_only{"structured-only"};
  structured_only.extended = false;
  Personality oldstyle{"oldstyle"};
  oldstyle.oldstyle = true;
  Personality unknown{"unknown-export"};
  unknown.unknown_export = true;
  Personality no_tls{"no-tls"};
  no_tls.starttls = false;

  struct Seed {
    const char* name;
    uint8_t config0;
    uint8_t config1;
    const Personality* personality;
  };
  // config0: goal | structured 4 | extended 8 | contexts << 4 | tls << 6
  // config1: request_block_size 1 | tight caps 2 | export name << 2 | chunk seed << 4
  const Seed seeds[] = {
      {"go-simple", 0x00, 0x01, &modern},
      {"go-structured-base-allocation", 0x14, 0x05, &modern},
      {"go-extended-three-contexts", 0x3c, 0x05, &modern},
      {"go-extended-falls-back-to-structured", 0x1c, 0x01, &structured_only},
      {"go-no-zeroes-refused", 0x04, 0x00, &zeroes},
      {"export-name-fallback", 0x0c, 0x05, &pre_go},
      {"export-name-with-zeroes", 0x00, 0x01, &pre_go_zeroes},
      {"oldstyle", 0x00, 0x01, &oldstyle},
      {"info", 0x15, 0x05, &modern},
      {"list", 0x02, 0x00, &modern},
      {"list-meta-contexts", 0x2f, 0x01, &modern},
      {"unknown-export", 0x04, 0x05, &unknown},
      {"tls-allowed", 0x54, 0x01, &modern},
      {"tls-required", 0x9c, 0x01, &modern},
      {"tls-allowed-refused", 0x44, 0x01, &no_tls},
      {"tls-required-refused", 0x84, 0x01, &no_tls},
      {"go-tight-caps", 0x14, 0x03, &modern},
      {"go-extended-chunked", 0x1c, 0x75, &modern},
      {"export-name-chunked", 0x00, 0xa1, &pre_go_zeroes},
      {"list-chunked", 0x02, 0x30, &modern},
  };
  for (const Seed& seed : seeds) {
    WriteSeed(dir / absl::StrCat("seed-", seed.name),
              HandshakeSession(seed.config0, seed.config1, *seed.personality));
  }
}

// --- Reply parser ----------------------------------------------------------------------------

struct Request {
  nbd::Command command;
  uint8_t flags;
  uint8_t cookie;
  uint32_t offset;
  uint32_t length;
};

// The fuzzer's config bytes (see reply_parser_fuzzer.cc) followed by nothing yet.
ByteBuilder ReplyConfig(int mode, bool direct, const std::vector<uint8_t>& context_ids,
                        const std::vector<Request>& requests, uint8_t config1) {
  ByteBuilder out;
  out.U8(static_cast<uint8_t>(mode | (direct ? 4 : 0) | context_ids.size() << 3 |
                              (requests.size() - 1) << 5))
      .U8(config1);
  for (uint8_t id : context_ids) out.U8(id);
  for (const Request& request : requests) {
    out.U8(static_cast<uint8_t>(request.command))
        .U8(request.flags)
        .U8(request.cookie)
        .U32(request.offset)
        .U32(request.length);
  }
  return out;
}

// "Simple reply message": magic, error, cookie.
void Simple(ByteBuilder& out, uint32_t error, uint64_t cookie) {
  out.U32(nbd::kSimpleReplyMagic).U32(error).U64(cookie);
}
// "Structured reply chunk message": magic, flags, type, cookie, 32-bit length.
void Chunk(ByteBuilder& out, uint16_t flags, nbd::ReplyType type, uint64_t cookie,
           const std::vector<uint8_t>& payload) {
  out.U32(nbd::kStructuredReplyMagic)
      .U16(flags)
      .U16(static_cast<uint16_t>(type))
      .U64(cookie)
      .U32(static_cast<uint32_t>(payload.size()))
      .Bytes(payload);
}
// "Extended reply chunk message": magic, flags, type, cookie, request offset, 64-bit length.
void ExtendedChunk(ByteBuilder& out, uint16_t flags, nbd::ReplyType type, uint64_t cookie,
                   uint64_t request_offset, const std::vector<uint8_t>& payload) {
  out.U32(nbd::kExtendedReplyMagic)
      .U16(flags)
      .U16(static_cast<uint16_t>(type))
      .U64(cookie)
      .U64(request_offset)
      .U64(payload.size())
      .Bytes(payload);
}

void WriteReplyParserSeeds(const std::filesystem::path& dir) {
  using nbd::Command;
  using nbd::ReplyType;
  constexpr uint16_t kDone = nbd::kReplyFlagDone;

  {  // Simple replies: a read with its payload, a write, an error, a flush.
    ByteBuilder out = ReplyConfig(0, true, {},
                                  {{Command::kRead, 0, 1, 0, 16},
                                   {Command::kWrite, 0, 2, 16, 16},
                                   {Command::kFlush, 0, 3, 0, 0},
                                   {Command::kRead, 0, 4, 0, 8}},
                                  0);
    Simple(out, 0, 2);
    Simple(out, 0, 1);
    out.Fill(16, 0xab);
    Simple(out, nbd::kEIo, 4);
    Simple(out, 0, 3);
    WriteSeed(dir / "seed-simple", out);
  }

  const std::vector<Request> structured_requests = {
      {Command::kRead, 0, 1, 4096, 32},
      {Command::kBlockStatus, 0, 2, 0, 65536},
      {Command::kWrite, nbd::kCmdFlagFua, 3, 0, 512},
      {Command::kRead, 0, 4, 0, 8},
      {Command::kRead, nbd::kCmdFlagDf, 5, 512, 8},
      {Command::kTrim, 0, 6, 0, 4096},
  };
  auto structured_stream = [](ByteBuilder& out) {
    // A read in two content chunks, out of order, then NBD_REPLY_TYPE_NONE.
    Chunk(out, 0, ReplyType::kOffsetHole, 1, ByteBuilder().U64(4096 + 16).U32(16));
    Chunk(out, 0, ReplyType::kOffsetData, 1, ByteBuilder().U64(4096).Fill(16, 0xcd));
    Chunk(out, kDone, ReplyType::kNone, 1, {});
    // Block status for context 1: two extents.
    Chunk(out, kDone, ReplyType::kBlockStatus, 2,
          ByteBuilder().U32(1).U32(4096).U32(0).U32(61440).U32(nbd::kStateHole | nbd::kStateZero));
    // A simple reply is allowed for requests without payload.
    Simple(out, 0, 3);
    // An error chunk with a message.
    Chunk(out, kDone, ReplyType::kError, 4, ByteBuilder().U32(nbd::kEIo).U16(4).Str("boom"));
    // DF: one content chunk that is also the last.
    Chunk(out, kDone, ReplyType::kOffsetData, 5, ByteBuilder().U64(512).Fill(8, 0x11));
    // An error at an offset, then the end of the reply.
    Chunk(out, 0, ReplyType::kErrorOffset, 6,
          ByteBuilder().U32(nbd::kEPerm).U16(9).Str("read-only").U64(1024));
    Chunk(out, kDone, ReplyType::kNone, 6, {});
  };
  {
    ByteBuilder out = ReplyConfig(1, false, {1}, structured_requests, 0);
    structured_stream(out);
    WriteSeed(dir / "seed-structured", out);
  }
  {
    ByteBuilder out = ReplyConfig(1, true, {1}, structured_requests, 0x2a);
    structured_stream(out);
    WriteSeed(dir / "seed-structured-chunked-direct", out);
  }
  {  // A 64-byte cap on buffered chunks: block status and an error message over it.
    ByteBuilder out =
        ReplyConfig(1, false, {1},
                    {{Command::kBlockStatus, 0, 1, 0, 40960}, {Command::kRead, 0, 2, 0, 8}}, 0x80);
    ByteBuilder extents;
    extents.U32(1);
    for (int i = 0; i < 10; ++i) extents.U32(4096).U32(i % 2);
    Chunk(out, kDone, ReplyType::kBlockStatus, 1, extents);
    Chunk(out, kDone, ReplyType::kError, 2, ByteBuilder().U32(nbd::kEIo).U16(80).Fill(80, 'e'));
    WriteSeed(dir / "seed-structured-tiny-cap", out);
  }

  const std::vector<Request> extended_requests = {
      {Command::kRead, 0, 7, 0, 24},
      {Command::kBlockStatus, nbd::kCmdFlagReqOne, 8, 1 << 20, 1 << 20},
      {Command::kTrim, 0, 9, 0, 4096},
      {Command::kWrite, nbd::kCmdFlagPayloadLen, 10, 8192, 4096},
  };
  auto extended_stream = [](ByteBuilder& out) {
    ExtendedChunk(out, 0, ReplyType::kOffsetData, 7, 0, ByteBuilder().U64(0).Fill(8, 0x5a));
    ExtendedChunk(out, 0, ReplyType::kOffsetHole, 7, 0, ByteBuilder().U64(8).U32(16));
    ExtendedChunk(out, kDone, ReplyType::kNone, 7, 0, {});
    // NBD_REPLY_TYPE_BLOCK_STATUS_EXT: context id, descriptor count, 64-bit length and flags.
    ExtendedChunk(out, 0, ReplyType::kBlockStatusExt, 8, 1 << 20,
                  ByteBuilder().U32(1).U32(1).U64(1 << 20).U64(0));
    ExtendedChunk(out, kDone, ReplyType::kBlockStatusExt, 8, 1 << 20,
                  ByteBuilder().U32(2).U32(1).U64(512 << 10).U64(1));
    ExtendedChunk(out, kDone, ReplyType::kErrorOffset, 9, 0,
                  ByteBuilder().U32(nbd::kENoSpc).U16(4).Str("full").U64(2048));
    ExtendedChunk(out, kDone, ReplyType::kNone, 10, 8192, {});
  };
  {
    ByteBuilder out = ReplyConfig(2, false, {1, 2}, extended_requests, 0);
    extended_stream(out);
    WriteSeed(dir / "seed-extended", out);
  }
  {
    ByteBuilder out = ReplyConfig(2, true, {1, 2}, extended_requests, 0x13);
    extended_stream(out);
    WriteSeed(dir / "seed-extended-chunked-direct", out);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path root(argv[1]);
  std::filesystem::create_directories(root / "handshake");
  std::filesystem::create_directories(root / "reply_parser");
  WriteHandshakeSeeds(root / "handshake");
  WriteReplyParserSeeds(root / "reply_parser");
  return 0;
}
