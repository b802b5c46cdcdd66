// CombineDirtyExtents on its own: a dirty bitmap and base:allocation read in lock-step, with
// extents of either context ending at different places, one description shorter than the
// other, a last extent past the end of the export, and no base:allocation at all.
#include "tools/copy/dirty_map.h"

#include <cstdint>
#include <optional>
#include <ostream>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbdcopy {

void PrintTo(const Range& range, std::ostream* out) {
  *out << (range.unchanged ? "unchanged" : range.zero ? "zero" : "data") << "["
       << range.offset << ", " << range.offset + range.length << ")";
}

namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr uint64_t kClean = 0;
constexpr uint64_t kDirty = kDirtyBitmapDirtyFlag;
constexpr uint64_t kData = 0;
constexpr uint64_t kHoleZero = 3;  // NBD_STATE_HOLE | NBD_STATE_ZERO

Range Data(uint64_t start, uint64_t end) { return Range{start, end - start, false}; }
Range Zero(uint64_t start, uint64_t end) { return Range{start, end - start, true}; }
Range Unchanged(uint64_t start, uint64_t end) {
  return Range{start, end - start, false, true};
}

TEST(DirtyMapTest, TheContextNameIsQemus) {
  EXPECT_EQ(DirtyBitmapContext("b0"), "qemu:dirty-bitmap:b0");
}

TEST(DirtyMapTest, DirtyDataIsCopiedDirtyZeroesAreZeroedTheRestIsUnchanged) {
  const std::vector<nbdring::Extent> bitmap = {{10, kClean}, {30, kDirty}, {60, kClean}};
  const std::vector<nbdring::Extent> allocation = {{20, kData}, {20, kHoleZero}, {60, kData}};
  EXPECT_THAT(CombineDirtyExtents(0, 100, bitmap, allocation),
              ElementsAre(Unchanged(0, 10), Data(10, 20), Zero(20, 40), Unchanged(40, 100)));
}

TEST(DirtyMapTest, TheShorterDescriptionEndsTheWindow) {
  // The next query starts at 50, where base:allocation stopped describing.
  const std::vector<nbdring::Extent> bitmap = {{100, kDirty}};
  const std::vector<nbdring::Extent> allocation = {{50, kData}};
  EXPECT_THAT(CombineDirtyExtents(1000, 2000, bitmap, allocation), ElementsAre(Data(1000, 1050)));
}

TEST(DirtyMapTest, ExtentsPastTheEndOfTheExportStopAtIt) {
  const std::vector<nbdring::Extent> bitmap = {{64, kClean}, {1 << 20, kDirty}};
  const std::vector<nbdring::Extent> allocation = {{1 << 20, kData}};
  EXPECT_THAT(CombineDirtyExtents(0, 128, bitmap, allocation),
              ElementsAre(Unchanged(0, 64), Data(64, 128)));
}

TEST(DirtyMapTest, WithoutBaseAllocationEveryDirtyByteIsData) {
  const std::vector<nbdring::Extent> bitmap = {{16, kDirty}, {16, kClean}};
  EXPECT_THAT(CombineDirtyExtents(0, 100, bitmap, std::nullopt),
              ElementsAre(Data(0, 16), Unchanged(16, 32)));
}

TEST(DirtyMapTest, OtherBitmapFlagsDoNotMakeBytesDirty) {
  const std::vector<nbdring::Extent> bitmap = {{16, 2}, {16, 3}};
  EXPECT_THAT(CombineDirtyExtents(0, 32, bitmap, std::nullopt),
              ElementsAre(Unchanged(0, 16), Data(16, 32)));
}

TEST(DirtyMapTest, EmptyExtentsAreSkippedAndAnEmptyDescriptionDescribesNothing) {
  const std::vector<nbdring::Extent> bitmap = {{0, kDirty}, {8, kDirty}};
  EXPECT_THAT(CombineDirtyExtents(0, 32, bitmap, std::nullopt), ElementsAre(Data(0, 8)));
  EXPECT_THAT(CombineDirtyExtents(0, 32, {}, std::nullopt), IsEmpty());
  const std::vector<nbdring::Extent> allocation;
  EXPECT_THAT(CombineDirtyExtents(0, 32, bitmap, allocation), IsEmpty());
}

}  // namespace
}  // namespace nbdcopy
