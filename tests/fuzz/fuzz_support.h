// tests/fuzz/fuzz_support.h — what the protocol-layer fuzz targets share: a trap for broken
// promises, and the generator that turns the seed bits of an input into chunk sizes, partial
// sends and the other choices a target makes while feeding it.
//
// The generator is a pure function of its seed, so every crash libFuzzer finds reproduces from
// the saved input alone; changing it changes how every saved input is split, so keep it fixed.
#ifndef NBDRING_TESTS_FUZZ_FUZZ_SUPPORT_H_
#define NBDRING_TESTS_FUZZ_FUZZ_SUPPORT_H_

#include <cstddef>
#include <cstdint>

namespace nbd::fuzzing {

// Traps rather than reporting: libFuzzer records the input of any crash, and a trap works the
// same in the libFuzzer build and under replay_main.cc.
inline void Check(bool condition) {
  if (!condition) __builtin_trap();
}

// SplitMix64 (Steele, Lea, Flood 2014).
class SplitMix {
 public:
  explicit SplitMix(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
  }
  // A value in [0, bound); 0 when `bound` is 0.
  size_t Below(size_t bound) { return bound == 0 ? 0 : static_cast<size_t>(Next() % bound); }

 private:
  uint64_t state_;
};

}  // namespace nbd::fuzzing

#endif  // NBDRING_TESTS_FUZZ_FUZZ_SUPPORT_H_
