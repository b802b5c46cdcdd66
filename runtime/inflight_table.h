// runtime/inflight_table.h — the per-connection table of requests in flight, indexed by the
// 64-bit NBD handle (the spec's "cookie").
//
// Handle layout: low 32 bits = slot index, high 32 bits = the slot's generation. A slot's
// generation changes every time it is handed out, so a reply carrying a stale handle (a slot
// reused since), a duplicate (the slot was released by the first reply) or an invented handle
// finds no match: Find() is one bounds check and one compare, O(1), no hashing.
//
// Capacity is fixed at construction (the in-flight limit); the free slots form a stack so the
// most recently released (cache-warm) slot is reused first. The table belongs to one ring
// thread and is never touched by another, so it needs neither locks nor atomics.
#ifndef NBDRING_RUNTIME_INFLIGHT_TABLE_H_
#define NBDRING_RUNTIME_INFLIGHT_TABLE_H_

#include <cstdint>
#include <memory>
#include <vector>

namespace nbdring {

template <typename Slot>
class InflightTable {
 public:
  explicit InflightTable(uint32_t capacity)
      : entries_(std::make_unique<Entry[]>(capacity)), capacity_(capacity) {
    free_.reserve(capacity);
    for (uint32_t i = capacity; i > 0; --i) free_.push_back(i - 1);
  }

  uint32_t capacity() const { return capacity_; }
  uint32_t in_use() const { return capacity_ - static_cast<uint32_t>(free_.size()); }
  bool full() const { return free_.empty(); }

  // Takes a free slot; returns its handle, or 0 when the table is full. 0 is never a valid
  // handle because generations start at 1.
  uint64_t Acquire(Slot** slot) {
    if (free_.empty()) return 0;
    uint32_t index = free_.back();
    free_.pop_back();
    Entry& entry = entries_[index];
    entry.generation = entry.generation == UINT32_MAX ? 1 : entry.generation + 1;
    entry.in_use = true;
    *slot = &entry.slot;
    return uint64_t{entry.generation} << 32 | index;
  }

  // The slot for `handle`, or nullptr when no request with that handle is in flight.
  Slot* Find(uint64_t handle) {
    uint32_t index = static_cast<uint32_t>(handle);
    if (index >= capacity_) return nullptr;
    Entry& entry = entries_[index];
    if (!entry.in_use || entry.generation != static_cast<uint32_t>(handle >> 32)) return nullptr;
    return &entry.slot;
  }

  // Frees the slot of a handle Find() accepted.
  void Release(uint64_t handle) {
    uint32_t index = static_cast<uint32_t>(handle);
    entries_[index].in_use = false;
    free_.push_back(index);
  }

  // Visits every slot in use (for failing them all when the connection dies).
  template <typename Visitor>
  void ForEachInUse(Visitor&& visit) {
    for (uint32_t i = 0; i < capacity_; ++i) {
      if (entries_[i].in_use) visit(uint64_t{entries_[i].generation} << 32 | i, entries_[i].slot);
    }
  }

 private:
  struct Entry {
    Slot slot{};
    uint32_t generation = 0;
    bool in_use = false;
  };
  std::unique_ptr<Entry[]> entries_;
  std::vector<uint32_t> free_;
  uint32_t capacity_;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_INFLIGHT_TABLE_H_
