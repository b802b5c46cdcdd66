#include "tools/copy/zero_blocks.h"

#include <algorithm>
#include <cstring>

namespace nbdcopy {

bool IsAllZero(const unsigned char* bytes, uint64_t length) {
  // The first byte is zero and every byte equals the one before it.
  return length == 0 || (bytes[0] == 0 && std::memcmp(bytes, bytes + 1, length - 1) == 0);
}

std::vector<Range> SplitZeroBlocks(const unsigned char* buffer, uint64_t offset,
                                   uint64_t length, uint64_t block_size) {
  std::vector<Range> ranges;
  const uint64_t end = offset + length;
  uint64_t position = offset;
  while (position < end) {
    const uint64_t block_end = std::min(end, (position / block_size + 1) * block_size);
    const bool whole_block = position % block_size == 0 && block_end - position == block_size;
    const bool zero = whole_block && IsAllZero(buffer + (position - offset), block_size);
    AppendRange(&ranges, Range{position, block_end - position, zero});
    position = block_end;
  }
  return ranges;
}

}  // namespace nbdcopy
