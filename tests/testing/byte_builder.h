// tests/testing/byte_builder.h — writes NBD messages byte by byte for tests, in the order the
// spec lists their fields, so a test reads like the spec's "S: 32 bits, ..." lines.
#ifndef NBDRING_TESTS_TESTING_BYTE_BUILDER_H_
#define NBDRING_TESTS_TESTING_BYTE_BUILDER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace nbd::testing {

class ByteBuilder {
 public:
  ByteBuilder& U8(uint8_t v) { bytes_.push_back(v); return *this; }
  ByteBuilder& U16(uint16_t v) { return U8(v >> 8).U8(v & 0xff); }
  ByteBuilder& U32(uint32_t v) { return U16(v >> 16).U16(v & 0xffff); }
  ByteBuilder& U64(uint64_t v) { return U32(v >> 32).U32(v & 0xffffffff); }
  ByteBuilder& Str(absl::string_view s) { bytes_.insert(bytes_.end(), s.begin(), s.end()); return *this; }
  ByteBuilder& Zeroes(size_t n) { bytes_.insert(bytes_.end(), n, 0); return *this; }
  ByteBuilder& Fill(size_t n, uint8_t v) { bytes_.insert(bytes_.end(), n, v); return *this; }
  ByteBuilder& Bytes(const std::vector<uint8_t>& b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); return *this; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  size_t size() const { return bytes_.size(); }
  operator const std::vector<uint8_t>&() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

}  // namespace nbd::testing

#endif  // NBDRING_TESTS_TESTING_BYTE_BUILDER_H_
