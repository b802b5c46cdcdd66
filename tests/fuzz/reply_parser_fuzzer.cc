// Fuzzes nbd::ReplyParser with an arbitrary server byte stream against a few requests in
// flight, split arbitrarily, sometimes receiving read payload directly into the "buffer".
// Beyond crashes, leaks and hangs it traps on broken promises of reply_parser.h:
//   * read data and holes land inside [0, request length) and never overlap each other;
//   * kDone comes at most once per cookie and only for requests in flight; a successful read
//     has had every byte of its buffer described;
//   * data spans point into the input of the same Next() call; Next() never consumes more
//     than it was given and always makes progress or asks for more;
//   * a fatal error is a DataLossError and sticks.
//
// Input layout (tests/fuzz/make_seed_corpus.cc writes seeds in this layout):
//   byte 0: bits 0-1 reply mode (simple, structured, extended, structured); bit 2 allows
//           PayloadReceivedDirectly; bits 3-4 number of meta context ids; bits 5-7 number of
//           requests minus one
//   byte 1: bits 0-6 seed for chunk sizes and direct receives (0: feed everything at once);
//           bit 7 a tiny max_buffered_chunk_bytes (64)
//   then:   one byte per meta context id
//   then:   per request 11 bytes: command (modulo 9), flags, cookie, offset (u32 BE),
//           length (u32 BE); a request repeating an earlier cookie is dropped
//   rest:   the server's bytes
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "nbd/export_info.h"
#include "nbd/reply_parser.h"
#include "nbd/wire.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using nbd::InflightRequest;
using nbd::ReplyEvent;
using nbd::ReplyParser;
using nbd::fuzzing::Check;
using nbd::fuzzing::SplitMix;

struct TrackedRequest {
  InflightRequest inflight;
  // What the parser told us landed in the buffer: [begin, end) ranges, by begin.
  std::map<uint64_t, uint64_t> filled;
  uint64_t bytes_filled = 0;
};

class MapLookup : public nbd::RequestLookup {
 public:
  InflightRequest* Find(uint64_t cookie) override {
    auto it = requests.find(cookie);
    return it == requests.end() ? nullptr : &it->second.inflight;
  }
  std::map<uint64_t, TrackedRequest> requests;
};

// The parser placed [offset, offset + length) of `request`'s buffer: inside the request, and
// not over anything placed before.
void Fill(TrackedRequest& request, uint64_t offset, uint64_t length) {
  Check(offset <= request.inflight.length && length <= request.inflight.length - offset);
  if (length == 0) return;
  const uint64_t end = offset + length;
  auto next = request.filled.lower_bound(offset);
  if (next != request.filled.end()) Check(next->first >= end);
  if (next != request.filled.begin()) Check(std::prev(next)->second <= offset);
  request.filled.emplace(offset, end);
  request.bytes_filled += length;
}

bool Within(absl::Span<const uint8_t> inner, absl::Span<const uint8_t> outer) {
  if (inner.empty()) return true;
  return inner.data() >= outer.data() && inner.data() + inner.size() <= outer.data() + outer.size();
}

class Driver {
 public:
  Driver(nbd::ReplyParserOptions options, MapLookup* lookup, bool direct, uint8_t seed)
      : lookup_(lookup), parser_(std::move(options), lookup), direct_(direct), random_(seed) {}

  // Runs the parser over `pending_` until it needs more bytes; false once it failed for good.
  bool Pump() {
    int idle_events = 0;
    while (true) {
      if (direct_ && MaybeReceiveDirectly()) continue;
      const absl::Span<const uint8_t> input(pending_.data() + start_, pending_.size() - start_);
      ReplyEvent event;
      const absl::StatusOr<size_t> consumed = parser_.Next(input, &event);
      if (!consumed.ok()) {
        Check(consumed.status().code() == absl::StatusCode::kDataLoss);
        ReplyEvent again;
        Check(parser_.Next(input, &again).status() == consumed.status());
        return false;
      }
      Check(*consumed <= input.size());
      if (event.kind == ReplyEvent::Kind::kNone) {
        if (*consumed == 0) break;  // needs more bytes
      } else {
        OnEvent(event, input);
      }
      start_ += *consumed;
      // Events without input are fine (kDone after a direct payload), endless ones are not.
      idle_events = *consumed == 0 ? idle_events + 1 : 0;
      Check(idle_events < 64);
    }
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(start_));
    start_ = 0;
    return true;
  }

  void Receive(absl::Span<const uint8_t> bytes) {
    pending_.insert(pending_.end(), bytes.begin(), bytes.end());
  }

 private:
  // Sometimes takes read payload off the stream itself, as the runtime does with recv().
  bool MaybeReceiveDirectly() {
    ReplyParser::PayloadTarget target;
    if (!parser_.payload_target(&target)) return false;
    auto it = lookup_->requests.find(target.cookie);
    Check(it != lookup_->requests.end() && target.request == &it->second.inflight);
    Check(target.remaining > 0);
    const size_t available = pending_.size() - start_;
    if (available == 0 || random_.Below(2) == 0) return false;
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(target.remaining, 1 + random_.Below(available)));
    Fill(it->second, target.buffer_offset, n);
    start_ += n;
    parser_.PayloadReceivedDirectly(n);
    return true;
  }

  void OnEvent(const ReplyEvent& event, absl::Span<const uint8_t> input) {
    auto it = lookup_->requests.find(event.cookie);
    Check(it != lookup_->requests.end());  // events only for requests in flight
    Check(event.request == &it->second.inflight);
    TrackedRequest& request = it->second;
    switch (event.kind) {
      case ReplyEvent::Kind::kReadData:
        Check(request.inflight.command == nbd::Command::kRead);
        Check(Within(event.data, input));
        Check(event.data.size() == event.length);
        Fill(request, event.buffer_offset, event.data.size());
        break;
      case ReplyEvent::Kind::kReadHole:
        Check(request.inflight.command == nbd::Command::kRead);
        Fill(request, event.buffer_offset, event.length);
        break;
      case ReplyEvent::Kind::kBlockStatus:
        Check(request.inflight.command == nbd::Command::kBlockStatus);
        Check(!event.extents.empty());
        break;
      case ReplyEvent::Kind::kDone:
        if (event.status.ok() && request.inflight.command == nbd::Command::kRead) {
          Check(request.bytes_filled == request.inflight.length);
        }
        // The cookie is free again: a second kDone or a late chunk must not find it.
        lookup_->requests.erase(it);
        break;
      case ReplyEvent::Kind::kNone:
        break;
    }
  }

  MapLookup* lookup_;
  ReplyParser parser_;
  bool direct_;
  SplitMix random_;
  std::vector<uint8_t> pending_;  // received, not yet consumed by the parser
  size_t start_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t mode_bits = data[0] & 3;
  const bool direct = (data[0] & 4) != 0;
  const size_t context_count = (data[0] >> 3) & 3;
  const size_t request_count = 1 + (data[0] >> 5);
  const uint8_t seed = data[1] & 0x7f;
  const size_t header_size = 2 + context_count + 11 * request_count;
  if (size < header_size) return 0;

  nbd::ReplyParserOptions options;
  options.mode = mode_bits == 0   ? nbd::ReplyMode::kSimple
                 : mode_bits == 2 ? nbd::ReplyMode::kExtended
                                  : nbd::ReplyMode::kStructured;
  if ((data[1] & 0x80) != 0) options.max_buffered_chunk_bytes = 64;
  const uint8_t* cursor = data + 2;
  for (size_t i = 0; i < context_count; ++i) options.meta_context_ids.push_back(*cursor++);

  MapLookup lookup;
  for (size_t i = 0; i < request_count; ++i, cursor += 11) {
    TrackedRequest request;
    request.inflight.command = static_cast<nbd::Command>(cursor[0] % 9);
    request.inflight.flags = cursor[1];
    request.inflight.offset = nbd::Load32(cursor + 3);
    request.inflight.length = nbd::Load32(cursor + 7);
    lookup.requests.emplace(cursor[2], std::move(request));  // keeps the first of a cookie
  }

  Driver driver(std::move(options), &lookup, direct, seed);
  SplitMix random(seed);
  absl::Span<const uint8_t> stream(data + header_size, size - header_size);
  while (!stream.empty()) {
    size_t chunk = stream.size();
    if (seed != 0) chunk = std::min(chunk, 1 + random.Below(random.Below(4) == 0 ? 1024 : 24));
    driver.Receive(stream.first(chunk));
    stream.remove_prefix(chunk);
    if (!driver.Pump()) break;
  }
  return 0;
}
