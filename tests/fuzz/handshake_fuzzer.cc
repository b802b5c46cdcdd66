// Fuzzes nbd::Handshake with an arbitrary server: whatever the server sends, in whatever
// pieces, the machine must not crash, leak, loop, accept more than it may, or report results
// that contradict the options it was given.
//
// Input layout (tests/fuzz/make_seed_corpus.cc writes seeds in this layout):
//   byte 0: bits 0-1 goal (transmission, info, list, list meta contexts); bit 2 structured
//           replies; bit 3 extended headers; bits 4-5 how many of kMetaContexts to ask for;
//           bits 6-7 TLS (disable, allow, require, allow)
//   byte 1: bit 0 request_block_size; bit 1 tight caps on option replies; bits 2-3 export
//           name (kExportNames); bits 4-7 seed for chunk sizes (0: feed and send everything
//           at once)
//   rest:   the server's bytes
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nbd/export_info.h"
#include "nbd/handshake.h"
#include "nbd/wire.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using nbd::Handshake;
using nbd::HandshakeOptions;
using nbd::fuzzing::Check;
using nbd::fuzzing::SplitMix;

const char* const kMetaContexts[] = {"base:allocation", "qemu:dirty-bitmap:bitmap0",
                                     "qemu:allocation-depth"};

std::string ExportName(int choice) {
  switch (choice) {
    case 0:
      return "";
    case 1:
      return "disk";
    case 2:
      return std::string(nbd::kMaxStringLength, 'x');  // the longest name allowed
    default:
      return "\xc3\xa9t\xc3\xa9";  // UTF-8
  }
}

// Sends output() in pieces, as a socket accepting partial writes would.
void DrainOutput(Handshake& handshake, bool all_at_once, SplitMix& random) {
  for (int round = 0; !handshake.output().empty(); ++round) {
    Check(round < 1 << 20);  // ConsumeOutput must make progress
    const size_t size = handshake.output().size();
    handshake.ConsumeOutput(all_at_once ? size : 1 + random.Below(size));
  }
}

void CheckResults(const Handshake& handshake, const HandshakeOptions& options) {
  const nbd::ExportInfo& info = handshake.export_info();
  // TLS: never without being allowed to, never skipped when required.
  if (handshake.tls_active()) Check(options.tls != HandshakeOptions::Tls::kDisable);
  if (options.tls == HandshakeOptions::Tls::kRequire) Check(handshake.tls_active());
  // Reply framing: only what the options asked for.
  if (info.reply_mode == nbd::ReplyMode::kExtended) Check(options.extended_headers);
  if (info.reply_mode == nbd::ReplyMode::kStructured) {
    Check(options.structured_replies || options.extended_headers);
  }
  if (!info.meta_contexts.empty()) {
    Check(info.reply_mode != nbd::ReplyMode::kSimple);
    Check(info.meta_contexts.size() <= options.meta_contexts.size());
  }
  // Strings from the server are bounded by the spec.
  Check(info.name.size() <= nbd::kMaxStringLength);
  Check(info.description.size() <= nbd::kMaxStringLength);
  for (const nbd::ExportListing& listing : handshake.exports()) {
    Check(listing.name.size() <= nbd::kMaxStringLength);
    Check(listing.description.size() <= nbd::kMaxStringLength);
  }
  Check(handshake.exports().size() <= options.max_replies_per_option);
  Check(handshake.listed_meta_contexts().size() <= options.max_replies_per_option);
  // The runtime divides and aligns by these ("Block size constraints"); a maximum below the
  // preferred size is legal for small exports, one below the minimum never is.
  const nbd::BlockSizeConstraints& block = info.block_size;
  Check(block.minimum >= 1);
  Check(block.minimum <= block.preferred);
  Check(block.minimum <= block.maximum);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  HandshakeOptions options;
  options.goal = static_cast<HandshakeOptions::Goal>(data[0] & 3);
  options.structured_replies = (data[0] & 4) != 0;
  options.extended_headers = (data[0] & 8) != 0;
  for (int i = 0; i < ((data[0] >> 4) & 3); ++i) options.meta_contexts.push_back(kMetaContexts[i]);
  const int tls = data[0] >> 6;
  options.tls = tls == 0   ? HandshakeOptions::Tls::kDisable
                : tls == 2 ? HandshakeOptions::Tls::kRequire
                           : HandshakeOptions::Tls::kAllow;
  options.request_block_size = (data[1] & 1) != 0;
  if ((data[1] & 2) != 0) {
    options.max_option_reply_bytes = 256;
    options.max_replies_per_option = 8;
  }
  options.export_name = ExportName((data[1] >> 2) & 3);
  const uint8_t seed = data[1] >> 4;
  const bool all_at_once = seed == 0;
  SplitMix random(seed);

  absl::Span<const uint8_t> stream(data + 2, size - 2);
  Handshake handshake(options);
  int tls_rounds = 0;
  while (true) {
    const Handshake::State state = handshake.state();
    if (state == Handshake::State::kStartTls) {
      DrainOutput(handshake, all_at_once, random);
      Check(++tls_rounds <= 1);  // STARTTLS at most once per connection
      handshake.TlsEstablished();
      Check(handshake.state() != Handshake::State::kStartTls);
      continue;
    }
    if (state != Handshake::State::kRunning) break;

    DrainOutput(handshake, all_at_once, random);
    const size_t wanted = handshake.bytes_wanted();
    Check(wanted > 0);  // running with nothing to send and nothing wanted would hang the I/O
    if (stream.empty()) break;

    size_t chunk = stream.size();
    if (!all_at_once) {
      // Sometimes exactly what the machine asked for, as the runtime does; sometimes not.
      chunk = random.Below(3) == 0 ? wanted : 1 + random.Below(random.Below(4) == 0 ? 512 : 16);
      chunk = std::min(chunk, stream.size());
    }
    const absl::StatusOr<size_t> consumed = handshake.Feed(stream.first(chunk));
    if (!consumed.ok()) {
      Check(handshake.state() == Handshake::State::kFailed);
      Check(!consumed.status().message().empty());
      break;
    }
    Check(*consumed <= chunk);
    // Everything is consumed while running; leftovers belong to the transmission phase or,
    // after STARTTLS was acknowledged, to the TLS handshake.
    if (*consumed < chunk) {
      Check(handshake.state() == Handshake::State::kDone ||
            handshake.state() == Handshake::State::kStartTls);
    }
    stream.remove_prefix(*consumed);
  }

  if (handshake.state() == Handshake::State::kDone) {
    DrainOutput(handshake, all_at_once, random);  // e.g. NBD_OPT_ABORT
    CheckResults(handshake, options);
  }
  return 0;
}
