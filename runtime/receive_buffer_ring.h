// runtime/receive_buffer_ring.h — receive buffers one ring's connections share: a provided-
// buffer ring (io_uring_register_buf_ring, Linux 5.19) from which the kernel picks a buffer
// only when a recv has data to put in it.
//
// Why: a connection used to own a receive buffer for its whole life (16 KiB, doubling to
// 32 KiB at four 4 KiB reads in flight), although a buffer is busy only between the kernel
// filling it and the parser reading it — a few microseconds per reply batch. Shared, the
// ring needs about as many buffers as recvs complete in one reap, not one per connection:
// 256 mostly idle connections cost kMaxBuffers buffers instead of 256.
//
// Sizing. The ring starts with `initial_buffers` and doubles the buffers it provides each
// time a recv finds none left (-ENOBUFS), up to `max_buffers`. One connection needs one
// buffer (a connection has one recv armed, and its buffer comes back before the next is
// armed), so a lone client stays at one. Buffers never shrink: the kernel takes them in
// ring order, so every provided buffer is touched anyway. What a recv that found the ring
// empty does is its connection's business (connection.h): every buffer taken is given back
// within the reap that saw it, so by the next submission the ring is full again.
//
// Owned by the Ring and used on its thread only, except the counters.
#ifndef NBDRING_RUNTIME_RECEIVE_BUFFER_RING_H_
#define NBDRING_RUNTIME_RECEIVE_BUFFER_RING_H_

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"

namespace nbdring {

struct ReceiveBufferRingOptions {
  // Off: every connection receives into a private buffer (as on kernels without the feature).
  bool enabled = true;
  // Big enough for several small replies (four 4 KiB reads with their headers are 16.4 KiB),
  // so a recv that fills one marks a busy connection (see connection.h).
  uint32_t buffer_bytes = 32 * 1024;
  uint32_t initial_buffers = 1;
  uint32_t max_buffers = 64;  // a power of two, at most 32768 (the kernel's limit)
};

class ReceiveBufferRing {
 public:
  // The group id its recvs name (IOSQE_BUFFER_SELECT, sqe->buf_group).
  static constexpr uint16_t kGroupId = 0;

  // Registers the ring with `ring`. The error's message says why the kernel refused
  // (Unimplemented for a kernel without provided buffer rings: EINVAL, ENOSYS, EOPNOTSUPP);
  // the caller falls back to private buffers.
  static absl::StatusOr<std::unique_ptr<ReceiveBufferRing>> Register(
      io_uring* ring, const ReceiveBufferRingOptions& options);
  // Unregisters; only once no recv that selects from it is left in the kernel.
  ~ReceiveBufferRing();

  uint32_t buffer_bytes() const { return options_.buffer_bytes; }
  // The buffer a CQE with IORING_CQE_F_BUFFER names (flags >> IORING_CQE_BUFFER_SHIFT).
  const uint8_t* buffer(uint16_t buffer_id) const { return buffers_[buffer_id]; }
  // Gives a buffer the kernel filled back to the ring, to be picked again.
  void Return(uint16_t buffer_id);
  // A recv found the ring empty: provides twice as many buffers, if below max_buffers.
  // False when it is at its maximum (the recv must take a private buffer).
  bool Grow();
  uint32_t buffers() const { return static_cast<uint32_t>(buffers_.size()); }
  // Buffers given back so far: a recv that found the ring empty may try it again only once
  // this moved on (others made progress, so it is no spin).
  uint64_t returned() const { return returned_; }

  ReceiveBufferRing(const ReceiveBufferRing&) = delete;
  ReceiveBufferRing& operator=(const ReceiveBufferRing&) = delete;

 private:
  ReceiveBufferRing() = default;
  // Allocates `count` more buffers and hands them to the kernel.
  void Provide(uint32_t count);

  io_uring* ring_ = nullptr;
  ReceiveBufferRingOptions options_;
  io_uring_buf_ring* entries_ = nullptr;  // max_buffers entries, mmapped (page aligned)
  size_t entries_bytes_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> blocks_;  // one per Provide
  std::vector<uint8_t*> buffers_;                   // by buffer id
  uint64_t returned_ = 0;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_RECEIVE_BUFFER_RING_H_
