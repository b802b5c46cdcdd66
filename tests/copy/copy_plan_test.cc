// CopyPlan on its own: chunks cut from descriptions that arrive window by window (ranges that
// straddle a window's end, windows shorter than asked, descriptions past the end), and chunks
// aligned to a minimum block size (zero ranges shrunk, their unaligned edges copied as data,
// a window that ends mid-block held back until the next one).
#include "tools/copy/copy_plan.h"

#include <cstdint>
#include <ostream>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace nbdcopy {

// Lets gtest print a Range in a failure message.
void PrintTo(const Range& range, std::ostream* out) {
  *out << (range.unchanged ? "unchanged" : range.zero ? "zero" : "data") << "[" << range.offset << ", "
       << range.offset + range.length << ")";
}

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kNoLimit = UINT64_MAX;

Range Data(uint64_t start, uint64_t end) { return Range{start, end - start, false}; }
Range Zero(uint64_t start, uint64_t end) { return Range{start, end - start, true}; }
Range Unchanged(uint64_t start, uint64_t end) {
  return Range{start, end - start, false, true};
}

// Every chunk the plan hands out until it has nothing ready.
std::vector<Range> Drain(CopyPlan& plan) {
  std::vector<Range> chunks;
  while (std::optional<Range> chunk = plan.Next()) chunks.push_back(*chunk);
  return chunks;
}

TEST(CopyPlanTest, OneDescriptionIsCutByTheChunkLimits) {
  CopyPlan plan(100, 1, 30, 50);
  ASSERT_TRUE(plan.Describe({Data(0, 40), Zero(40, 100)}).ok());
  EXPECT_TRUE(plan.fully_described());
  EXPECT_EQ(plan.ready_bytes(), 100u);
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 30), Data(30, 40), Zero(40, 90), Zero(90, 100)));
  EXPECT_EQ(plan.ready_bytes(), 0u);
}

TEST(CopyPlanTest, NothingIsReadyBeforeTheFirstDescription) {
  CopyPlan plan(100, 1, 30, 50);
  EXPECT_FALSE(plan.fully_described());
  EXPECT_EQ(plan.described_end(), 0u);
  EXPECT_EQ(plan.Next(), std::nullopt);
}

TEST(CopyPlanTest, AnEmptySourceIsFullyDescribedFromTheStart) {
  CopyPlan plan(0, 1, 30, 50);
  EXPECT_TRUE(plan.fully_described());
  EXPECT_EQ(plan.Next(), std::nullopt);
}

TEST(CopyPlanTest, ARangeStraddlingTwoWindowsIsOneRunWhenNotYetHandedOut) {
  CopyPlan plan(64, 1, 8, kNoLimit);
  ASSERT_TRUE(plan.Describe({Data(0, 10), Zero(10, 16)}).ok());
  EXPECT_EQ(plan.described_end(), 16u);
  EXPECT_THAT(plan.Next(), Data(0, 8));
  // The zero run goes on in the next window: one chunk, not two.
  ASSERT_TRUE(plan.Describe({Zero(16, 40), Data(40, 64)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(8, 10), Zero(10, 40), Data(40, 48), Data(48, 56),
                                       Data(56, 64)));
}

TEST(CopyPlanTest, ARangeStraddlingTwoWindowsContinuesWhereTheFirstPartEnded) {
  CopyPlan plan(64, 1, 16, kNoLimit);
  ASSERT_TRUE(plan.Describe({Zero(0, 4), Data(4, 20)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Zero(0, 4), Data(4, 20)));
  EXPECT_FALSE(plan.fully_described());
  ASSERT_TRUE(plan.Describe({Data(20, 50), Zero(50, 64)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(20, 36), Data(36, 50), Zero(50, 64)));
  EXPECT_TRUE(plan.fully_described());
}

TEST(CopyPlanTest, WindowsShorterThanAskedAreFollowedToTheEnd) {
  // A server that answers every query with a single extent.
  CopyPlan plan(30, 1, 100, kNoLimit);
  std::vector<Range> chunks;
  const std::vector<Range> answers = {Data(0, 7), Zero(7, 8), Zero(8, 19), Data(19, 30)};
  for (const Range& answer : answers) {
    EXPECT_EQ(plan.described_end(), answer.offset);
    ASSERT_TRUE(plan.Describe({answer}).ok());
    for (const Range& chunk : Drain(plan)) chunks.push_back(chunk);
  }
  EXPECT_TRUE(plan.fully_described());
  EXPECT_THAT(chunks, ElementsAre(Data(0, 7), Zero(7, 8), Zero(8, 19), Data(19, 30)));
}

TEST(CopyPlanTest, WhatLiesPastTheEndIsIgnored) {
  CopyPlan plan(20, 1, 100, kNoLimit);
  ASSERT_TRUE(plan.Describe({Data(0, 10), Zero(10, 4096), Data(4096, 8192)}).ok());
  EXPECT_TRUE(plan.fully_described());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 10), Zero(10, 20)));
}

TEST(CopyPlanTest, ADescriptionMustStartWhereTheLastEnded) {
  CopyPlan plan(100, 1, 100, kNoLimit);
  ASSERT_TRUE(plan.Describe({Data(0, 10)}).ok());
  absl::Status status = plan.Describe({Data(12, 20)});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("the source map asked for offset 10 has a range at "
                                          "offset 12 where offset 10 was expected"));
  status = plan.Describe({Data(10, 15), Zero(16, 20)});
  EXPECT_THAT(status.message(), HasSubstr("has a range at offset 16 where offset 15 was "
                                          "expected"));
}

TEST(CopyPlanTest, ADescriptionOfNoBytesIsAnError) {
  CopyPlan plan(100, 1, 100, kNoLimit);
  absl::Status status = plan.Describe({});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("the source map asked for offset 0 described no bytes"));
}

TEST(CopyPlanTest, ZeroRangesShrinkToAlignedBlocksAndTheirEdgesAreCopied) {
  CopyPlan plan(32768, 4096, 8192, kNoLimit);
  ASSERT_TRUE(plan.Describe({Data(0, 1000), Zero(1000, 20000), Data(20000, 32768)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 4096), Zero(4096, 16384), Data(16384, 24576),
                                       Data(24576, 32768)));
}

TEST(CopyPlanTest, AZeroRangeWithinOneBlockIsCopiedAsData) {
  CopyPlan plan(16384, 4096, 16384, kNoLimit);
  ASSERT_TRUE(plan.Describe({Data(0, 4100), Zero(4100, 8000), Data(8000, 16384)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 16384)));
}

TEST(CopyPlanTest, AlignedZeroRangesAreKeptWhole) {
  CopyPlan plan(16384, 4096, 4096, 8192);
  ASSERT_TRUE(plan.Describe({Zero(0, 12288), Data(12288, 16384)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Zero(0, 8192), Zero(8192, 12288), Data(12288, 16384)));
}

TEST(CopyPlanTest, AWindowEndingMidBlockHoldsBackItsTail) {
  CopyPlan plan(16384, 4096, 16384, kNoLimit);
  ASSERT_TRUE(plan.Describe({Data(0, 5000)}).ok());
  EXPECT_EQ(plan.described_end(), 5000u);
  EXPECT_EQ(plan.ready_bytes(), 4096u);
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 4096)));
  ASSERT_TRUE(plan.Describe({Zero(5000, 16384)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(4096, 8192), Zero(8192, 16384)));
}

TEST(CopyPlanTest, AZeroRangeSplitByAWindowMidBlockStillShrinksCorrectly) {
  // Zeroes from 1000 to 13000, told in two windows ending at 6000 and 16384.
  CopyPlan plan(16384, 4096, 16384, kNoLimit);
  ASSERT_TRUE(plan.Describe({Data(0, 1000), Zero(1000, 6000)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 4096)));
  ASSERT_TRUE(plan.Describe({Zero(6000, 13000), Data(13000, 16384)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Zero(4096, 12288), Data(12288, 16384)));
}

TEST(CopyPlanTest, DescriptionsSmallerThanABlockAccumulate) {
  // A server that describes 512 bytes per reply, alternating, under a 4096-byte block.
  CopyPlan plan(8192, 4096, 8192, kNoLimit);
  for (uint64_t offset = 0; offset < 4096; offset += 512) {
    ASSERT_TRUE(plan.Describe({Range{offset, 512, (offset / 512) % 2 == 1}}).ok());
    if (offset + 512 < 4096) {
      EXPECT_EQ(plan.Next(), std::nullopt) << "at " << offset;
    }
  }
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 4096)));
  ASSERT_TRUE(plan.Describe({Zero(4096, 8192)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Zero(4096, 8192)));
  EXPECT_TRUE(plan.fully_described());
}

TEST(CopyPlanTest, EveryChunkOfARandomLookingMapIsAlignedAndTheyCoverTheSourceInOrder) {
  // Odd extents, odd windows: whatever arrives, chunks stay aligned, contiguous and exact.
  const uint64_t size = 64 * 4096;
  const uint64_t alignment = 4096;
  std::vector<Range> extents;
  uint64_t offset = 0;
  for (uint64_t i = 0; offset < size; ++i) {
    const uint64_t length = std::min(size - offset, 333 + (i * 7919) % 20000);
    extents.push_back(Range{offset, length, i % 3 != 0});
    offset += length;
  }
  CopyPlan plan(size, alignment, 3 * alignment, 5 * alignment);
  std::vector<Range> chunks;
  for (size_t i = 0; i < extents.size(); i += 2) {
    const size_t count = std::min<size_t>(2, extents.size() - i);
    ASSERT_TRUE(plan.Describe(absl::MakeConstSpan(&extents[i], count)).ok());
    for (const Range& chunk : Drain(plan)) chunks.push_back(chunk);
  }
  ASSERT_TRUE(plan.fully_described());
  std::vector<Range> runs;  // the extents with neighbours of one kind merged
  for (const Range& extent : extents) AppendRange(&runs, extent);
  uint64_t expected_offset = 0;
  int zero_chunks = 0;
  for (const Range& chunk : chunks) {
    EXPECT_EQ(chunk.offset, expected_offset);
    EXPECT_EQ(chunk.offset % alignment, 0u);
    EXPECT_EQ(chunk.length % alignment, 0u);
    EXPECT_LE(chunk.length, (chunk.zero ? 5 : 3) * alignment);
    if (chunk.zero) {
      ++zero_chunks;
      bool inside = false;  // a zero chunk never covers a byte of data
      for (const Range& run : runs) {
        inside |= run.zero && run.offset <= chunk.offset &&
                  chunk.offset + chunk.length <= run.offset + run.length;
      }
      EXPECT_TRUE(inside) << ::testing::PrintToString(chunk);
    }
    expected_offset += chunk.length;
  }
  EXPECT_EQ(expected_offset, size);
  EXPECT_GT(zero_chunks, 0) << "every zero run was copied as data";
}

TEST(CopyPlanTest, AnUnchangedRangeIsOneChunkWhateverTheLimits) {
  CopyPlan plan(200, 1, 30, 50);
  ASSERT_TRUE(plan.Describe({Data(0, 20), Unchanged(20, 180), Zero(180, 200)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 20), Unchanged(20, 180), Zero(180, 200)));
}

TEST(CopyPlanTest, UnchangedAndZeroRangesDoNotMerge) {
  std::vector<Range> ranges;
  AppendRange(&ranges, Unchanged(0, 10));
  AppendRange(&ranges, Zero(10, 20));
  AppendRange(&ranges, Unchanged(20, 30));
  AppendRange(&ranges, Unchanged(30, 40));
  EXPECT_THAT(ranges, ElementsAre(Unchanged(0, 10), Zero(10, 20), Unchanged(20, 40)));
}

TEST(CopyPlanTest, AnUnalignedUnchangedRangeShrinksAndItsEdgesAreCopied) {
  // Copying an unchanged byte again is harmless; skipping a dirty one would not be.
  CopyPlan plan(64, 16, 64, 64);
  ASSERT_TRUE(plan.Describe({Data(0, 10), Unchanged(10, 50), Data(50, 64)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 16), Unchanged(16, 48), Data(48, 64)));
}

TEST(CopyPlanTest, AnUnchangedRangeStraddlingWindowsKeepsItsKind) {
  CopyPlan plan(64, 16, 64, 64);
  ASSERT_TRUE(plan.Describe({Data(0, 16), Unchanged(16, 40)}).ok());
  ASSERT_TRUE(plan.Describe({Unchanged(40, 64)}).ok());
  EXPECT_THAT(Drain(plan), ElementsAre(Data(0, 16), Unchanged(16, 64)));
}

}  // namespace
}  // namespace nbdcopy
