// tools/copy/zero_blocks.h — -S/--sparse: finding whole blocks of zeroes in data just read, so
// the copy can leave them as holes (or send NBD_CMD_WRITE_ZEROES) instead of writing them.
//
// Blocks are aligned to absolute offsets that are multiples of the block size, as nbdcopy's
// are; the partial blocks at the edges of a buffer are always data.
#ifndef NBDRING_TOOLS_COPY_ZERO_BLOCKS_H_
#define NBDRING_TOOLS_COPY_ZERO_BLOCKS_H_

#include <cstdint>
#include <vector>

#include "tools/copy/copy_plan.h"

namespace nbdcopy {

// True when all `length` bytes at `bytes` are zero.
bool IsAllZero(const unsigned char* bytes, uint64_t length);

// Splits the `length` bytes of `buffer`, which hold the source at `offset`, into ranges in
// order: runs of whole zero blocks of `block_size` bytes (zero = true) and the data between
// them. Adjacent ranges differ in `zero`. `block_size` must be positive.
std::vector<Range> SplitZeroBlocks(const unsigned char* buffer, uint64_t offset,
                                   uint64_t length, uint64_t block_size);

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_ZERO_BLOCKS_H_
