#include "runtime/receive_buffer_ring.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/numeric/bits.h"
#include "absl/strings/str_cat.h"

namespace nbdring {

absl::StatusOr<std::unique_ptr<ReceiveBufferRing>> ReceiveBufferRing::Register(
    io_uring* ring, const ReceiveBufferRingOptions& options) {
  if (!absl::has_single_bit(options.max_buffers) || options.max_buffers > 32768 ||
      options.initial_buffers == 0 || options.initial_buffers > options.max_buffers ||
      options.buffer_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "receive buffer ring: max_buffers must be a power of two up to 32768 and at least "
        "initial_buffers (>= 1), got ",
        options.initial_buffers, " of ", options.max_buffers, " buffers of ",
        options.buffer_bytes, " bytes"));
  }
  std::unique_ptr<ReceiveBufferRing> pool(new ReceiveBufferRing());
  pool->ring_ = ring;
  pool->options_ = options;
  // The kernel reads the entries from this memory; it must be page aligned. An mmap keeps it
  // off the heap (64 entries are one page).
  pool->entries_bytes_ = options.max_buffers * sizeof(io_uring_buf);
  void* memory = mmap(nullptr, pool->entries_bytes_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("receive buffer ring: mmap: ", std::strerror(errno)));
  }
  pool->entries_ = static_cast<io_uring_buf_ring*>(memory);
  io_uring_buf_ring_init(pool->entries_);
  io_uring_buf_reg registration{};
  registration.ring_addr = reinterpret_cast<uint64_t>(memory);
  registration.ring_entries = options.max_buffers;
  registration.bgid = kGroupId;
  if (int result = io_uring_register_buf_ring(ring, &registration, 0); result < 0) {
    munmap(memory, pool->entries_bytes_);
    pool->entries_ = nullptr;
    const std::string why = absl::StrCat("io_uring_register_buf_ring: ", std::strerror(-result));
    if (result == -EINVAL || result == -ENOSYS || result == -EOPNOTSUPP) {
      return absl::UnimplementedError(why);
    }
    return absl::UnavailableError(why);
  }
  pool->Provide(options.initial_buffers);
  return pool;
}

ReceiveBufferRing::~ReceiveBufferRing() {
  if (entries_ == nullptr) return;
  io_uring_unregister_buf_ring(ring_, kGroupId);
  munmap(entries_, entries_bytes_);
}

void ReceiveBufferRing::Provide(uint32_t count) {
  const size_t bytes = options_.buffer_bytes;
  // Not value-initialised: pages are touched only when the kernel first fills a buffer.
  blocks_.push_back(std::unique_ptr<uint8_t[]>(new uint8_t[count * bytes]));
  uint8_t* block = blocks_.back().get();
  const int mask = io_uring_buf_ring_mask(options_.max_buffers);
  for (uint32_t i = 0; i < count; ++i) {
    const auto id = static_cast<uint16_t>(buffers_.size());
    buffers_.push_back(block + i * bytes);
    io_uring_buf_ring_add(entries_, buffers_.back(), options_.buffer_bytes, id, mask,
                          static_cast<int>(i));
  }
  io_uring_buf_ring_advance(entries_, static_cast<int>(count));
}

void ReceiveBufferRing::Return(uint16_t buffer_id) {
  io_uring_buf_ring_add(entries_, buffers_[buffer_id], options_.buffer_bytes, buffer_id,
                        io_uring_buf_ring_mask(options_.max_buffers), 0);
  io_uring_buf_ring_advance(entries_, 1);
  ++returned_;
}

bool ReceiveBufferRing::Grow() {
  const uint32_t now = buffers();
  if (now >= options_.max_buffers) return false;
  Provide(std::min(now, options_.max_buffers - now));
  return true;
}

}  // namespace nbdring
