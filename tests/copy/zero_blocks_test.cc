// -S zero-block detection alone: blocks on absolute offsets, partial edge blocks kept as data.
#include "tools/copy/zero_blocks.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbdcopy {
namespace {

using ::testing::ElementsAre;

const unsigned char* Bytes(const std::string& text) {
  return reinterpret_cast<const unsigned char*>(text.data());
}

TEST(ZeroBlocksTest, WholeZeroBlocksAreSplitOutAndMerged) {
  std::string buffer(16, '\0');
  buffer[5] = 'x';  // block [4, 8) holds data
  EXPECT_THAT(SplitZeroBlocks(Bytes(buffer), 0, 16, 4),
              ElementsAre(Range{0, 4, true}, Range{4, 4, false}, Range{8, 8, true}));
}

TEST(ZeroBlocksTest, PartialBlocksAtTheEdgesAreData) {
  // Bytes [6, 18) of the source: [6, 8) and [16, 18) are parts of blocks, so data.
  const std::string buffer(12, '\0');
  EXPECT_THAT(SplitZeroBlocks(Bytes(buffer), 6, 12, 4),
              ElementsAre(Range{6, 2, false}, Range{8, 8, true}, Range{16, 2, false}));
}

TEST(ZeroBlocksTest, DataEverywhereIsOneRange) {
  const std::string buffer(8, 'a');
  EXPECT_THAT(SplitZeroBlocks(Bytes(buffer), 0, 8, 4), ElementsAre(Range{0, 8, false}));
  EXPECT_FALSE(IsAllZero(Bytes(std::string("\0\0\0a", 4)), 4));
  EXPECT_TRUE(IsAllZero(Bytes(std::string(4, '\0')), 4));
}

}  // namespace
}  // namespace nbdcopy
