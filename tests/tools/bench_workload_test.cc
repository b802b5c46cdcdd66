// nbd-bench's workload pieces: size/mode/CPU-list parsing, the PRNG, offsets staying inside
// the region and aligned, and the verification pattern.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/bench/workload.h"

namespace nbdbench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParseByteSizeTest, AcceptsPlainBytesAndBinarySuffixes) {
  const std::pair<const char*, uint64_t> cases[] = {
      {"0", 0},
      {"512", 512},
      {"4096", 4096},
      {"4096b", 4096},
      {"4k", 4096},
      {"4K", 4096},
      {"4kb", 4096},
      {"4KiB", 4096},
      {"64k", 65536},
      {"1m", 1 << 20},
      {"1M", 1 << 20},
      {"1MiB", 1 << 20},
      {"2g", uint64_t{2} << 30},
      {"1t", uint64_t{1} << 40},
      {"8388607t", ((uint64_t{1} << 23) - 1) << 40},
  };
  for (const auto& [text, expected] : cases) {
    absl::StatusOr<uint64_t> size = ParseByteSize(text);
    ASSERT_TRUE(size.ok()) << text << ": " << size.status();
    EXPECT_EQ(*size, expected) << text;
  }
}

TEST(ParseByteSizeTest, RejectsMalformedSizesWithTheReason) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "must start with a number"},
      {"k", "must start with a number"},
      {"-4k", "must start with a number"},
      {" 4k", "must start with a number"},
      {"4x", "has an unknown suffix"},
      {"4kk", "has an unknown suffix"},
      {"4 k", "has an unknown suffix"},
      {"1.5k", "has an unknown suffix"},
      {"4ib", "has an unknown suffix"},
      {"99999999999999999999", "is too large"},
      {"8388608t", "is too large"},  // 2^63
      {"9223372036854775808", "is too large"},
  };
  for (const auto& [text, reason] : cases) {
    absl::StatusOr<uint64_t> size = ParseByteSize(text);
    ASSERT_FALSE(size.ok()) << text << " parsed as " << *size;
    EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(size.status().message(), HasSubstr(reason)) << text;
    EXPECT_THAT(size.status().message(), HasSubstr(absl::StrCat("\"", text, "\""))) << text;
  }
}

TEST(ParseReadWriteTest, KnowsFiosNames) {
  EXPECT_EQ(*ParseReadWrite("randread"), ReadWrite::kRandRead);
  EXPECT_EQ(*ParseReadWrite("randwrite"), ReadWrite::kRandWrite);
  EXPECT_EQ(*ParseReadWrite("read"), ReadWrite::kRead);
  EXPECT_EQ(*ParseReadWrite("write"), ReadWrite::kWrite);
  EXPECT_EQ(*ParseReadWrite("randrw"), ReadWrite::kRandRw);
  for (ReadWrite mode : {ReadWrite::kRandRead, ReadWrite::kRandWrite, ReadWrite::kRead,
                         ReadWrite::kWrite, ReadWrite::kRandRw}) {
    EXPECT_EQ(*ParseReadWrite(ReadWriteName(mode)), mode);
  }
  absl::StatusOr<ReadWrite> bad = ParseReadWrite("rw");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("got \"rw\""));
  EXPECT_TRUE(ReadsData(ReadWrite::kRandRw) && WritesData(ReadWrite::kRandRw));
  EXPECT_FALSE(WritesData(ReadWrite::kRead));
  EXPECT_FALSE(ReadsData(ReadWrite::kWrite));
  EXPECT_FALSE(IsRandom(ReadWrite::kRead));
  EXPECT_TRUE(IsRandom(ReadWrite::kRandWrite));
}

TEST(ParseCpuListTest, AcceptsTasksetSyntax) {
  EXPECT_THAT(*ParseCpuList("1"), ElementsAre(1));
  EXPECT_THAT(*ParseCpuList("0,1"), ElementsAre(0, 1));
  EXPECT_THAT(*ParseCpuList("0-3,6"), ElementsAre(0, 1, 2, 3, 6));
  EXPECT_THAT(*ParseCpuList("3,1,1-2"), ElementsAre(1, 2, 3));
}

TEST(ParseCpuListTest, RejectsMalformedLists) {
  for (const char* text : {"", "a", "1-", "-1", "1,,2", "3-1", "0-2000", "1.5"}) {
    absl::StatusOr<std::vector<int>> cpus = ParseCpuList(text);
    EXPECT_FALSE(cpus.ok()) << text;
    EXPECT_THAT(cpus.status().message(), HasSubstr("--cpus")) << text;
  }
}

TEST(SplitMix64Test, MatchesTheReferenceSequence) {
  // First outputs of Vigna's splitmix64.c seeded with 0.
  SplitMix64 random(0);
  EXPECT_EQ(random.Next(), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(random.Next(), 0x6e789e6aa1b965f4ULL);
  EXPECT_EQ(random.Next(), 0x06c45d188009454fULL);
}

TEST(SplitMix64Test, BelowStaysBelowTheBoundAndReachesEveryValue) {
  SplitMix64 random(42);
  std::set<uint64_t> seen;
  for (int i = 0; i < 10'000; ++i) {
    const uint64_t value = random.Below(10);
    ASSERT_LT(value, 10u);
    seen.insert(value);
  }
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(random.Below(1), 0u);
}

TEST(BlockRangeTest, RefusesBlocksLargerThanTheRegion) {
  absl::StatusOr<BlockRange> too_big = BlockRange::Create(0, 4096, 8192);
  ASSERT_FALSE(too_big.ok());
  EXPECT_THAT(too_big.status().message(),
              HasSubstr("block size 8192 is larger than the region (4096 bytes at offset 0)"));
  absl::StatusOr<BlockRange> zero = BlockRange::Create(0, 4096, 0);
  ASSERT_FALSE(zero.ok());
  EXPECT_THAT(zero.status().message(), HasSubstr("must not be zero"));
  EXPECT_TRUE(BlockRange::Create(0, 4096, 4096).ok());
}

TEST(BlockRangeTest, RandomOffsetsStayInsideTheRegionAndAligned) {
  // A region that starts off any power of two and ends with a partial block.
  constexpr uint64_t kRegionOffset = 3 * 4096 + 512;
  constexpr uint64_t kRegionLength = 16 * 4096 + 100;
  absl::StatusOr<BlockRange> blocks = BlockRange::Create(kRegionOffset, kRegionLength, 4096);
  ASSERT_TRUE(blocks.ok());
  EXPECT_EQ(blocks->block_count(), 16u);
  SplitMix64 random(7);
  std::set<uint64_t> seen;
  for (int i = 0; i < 100'000; ++i) {
    const uint64_t offset = blocks->RandomOffset(random);
    ASSERT_GE(offset, kRegionOffset);
    ASSERT_LE(offset + 4096, kRegionOffset + kRegionLength);
    ASSERT_EQ((offset - kRegionOffset) % 4096, 0u) << offset;
    seen.insert(offset);
  }
  EXPECT_EQ(seen.size(), 16u);  // every block is visited, the partial tail never
}

TEST(BlockRangeTest, RandomOffsetsAreSpreadEvenly) {
  absl::StatusOr<BlockRange> blocks = BlockRange::Create(0, 64 * 65536, 65536);
  ASSERT_TRUE(blocks.ok());
  std::vector<int> hits(64, 0);
  SplitMix64 random(1);
  constexpr int kDraws = 640'000;
  for (int i = 0; i < kDraws; ++i) ++hits[blocks->RandomOffset(random) / 65536];
  for (int count : hits) {
    EXPECT_NEAR(count, kDraws / 64, kDraws / 64 / 20);  // within 5% of the mean
  }
}

TEST(BlockRangeTest, SequentialStreamsStartAtTheirShareAndWrap) {
  absl::StatusOr<BlockRange> blocks = BlockRange::Create(1 << 20, 100 * 4096, 4096);
  ASSERT_TRUE(blocks.ok());
  constexpr uint64_t kBase = 1 << 20;
  EXPECT_EQ(blocks->StreamOffset(0, 4, 0), kBase);
  EXPECT_EQ(blocks->StreamOffset(1, 4, 0), kBase + 25 * 4096);
  EXPECT_EQ(blocks->StreamOffset(3, 4, 0), kBase + 75 * 4096);
  EXPECT_EQ(blocks->StreamOffset(1, 4, 1), kBase + 26 * 4096);
  EXPECT_EQ(blocks->StreamOffset(3, 4, 24), kBase + 99 * 4096);
  EXPECT_EQ(blocks->StreamOffset(3, 4, 25), kBase);  // wrapped
  for (int stream = 0; stream < 3; ++stream) {
    for (uint64_t step = 0; step < 1000; ++step) {
      const uint64_t offset = blocks->StreamOffset(stream, 3, step);
      ASSERT_GE(offset, kBase);
      ASSERT_LE(offset + 4096, kBase + 100 * 4096);
      ASSERT_EQ((offset - kBase) % 4096, 0u);
    }
  }
}

TEST(PatternTest, FillMatchesPatternByteAtAnyAlignment) {
  std::vector<uint8_t> data(1000);
  for (uint64_t offset : {uint64_t{0}, uint64_t{3}, uint64_t{4096}, uint64_t{1} << 40}) {
    FillPattern(offset, data.data(), data.size());
    for (size_t i = 0; i < data.size(); ++i) {
      ASSERT_EQ(data[i], PatternByte(offset + i)) << offset << "+" << i;
    }
    EXPECT_EQ(FindPatternMismatch(offset, data.data(), data.size()), std::nullopt);
  }
}

TEST(PatternTest, DependsOnTheOffsetOnly) {
  std::vector<uint8_t> whole(8192);
  FillPattern(0, whole.data(), whole.size());
  std::vector<uint8_t> piece(100);
  FillPattern(4093, piece.data(), piece.size());
  EXPECT_TRUE(std::equal(piece.begin(), piece.end(), whole.begin() + 4093));
  // Different places hold different data, so a read served from the wrong offset fails.
  EXPECT_FALSE(std::equal(whole.begin(), whole.begin() + 4096, whole.begin() + 4096));
}

TEST(PatternTest, MismatchNamesTheExactOffset) {
  constexpr uint64_t kOffset = 1'000'003;
  std::vector<uint8_t> data(4096);
  for (size_t flip : {size_t{0}, size_t{4}, size_t{2000}, size_t{4095}}) {
    FillPattern(kOffset, data.data(), data.size());
    data[flip] ^= 0x01;
    EXPECT_EQ(FindPatternMismatch(kOffset, data.data(), data.size()), kOffset + flip);
  }
  FillPattern(kOffset, data.data(), data.size());
  data[1234] = static_cast<uint8_t>(PatternByte(kOffset + 1234) ^ 0xff);
  absl::Status status = CheckPatternData(kOffset, data.data(), data.size());
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr("VERIFY FAILED: byte at offset 1001237 (0xf4715)"));
  EXPECT_THAT(status.message(), HasSubstr("in the 4096-byte read at offset 1000003"));
  data[1234] = PatternByte(kOffset + 1234);
  EXPECT_TRUE(CheckPatternData(kOffset, data.data(), data.size()).ok());
}

}  // namespace
}  // namespace nbdbench
