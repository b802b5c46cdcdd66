// runtime/operation_queue.h — queues of caller-owned Operations, linked through the
// Operation itself (no allocation, no copies).
//
// OperationQueue: a FIFO for one thread (a connection's requests waiting for a slot).
// SubmissionInbox: many producers, one consumer (the ring). Producers push with one CAS on a
// Treiber stack; the ring takes the whole stack with one exchange and reverses it, which
// restores submission order. Because the consumer only ever takes everything, the ABA problem
// of a Treiber pop cannot arise.
#ifndef NBDRING_RUNTIME_OPERATION_QUEUE_H_
#define NBDRING_RUNTIME_OPERATION_QUEUE_H_

#include <atomic>

#include "runtime/operation_state.h"

namespace nbdring {

class OperationQueue {
 public:
  bool empty() const { return head_ == nullptr; }
  Operation* front() const { return head_; }
  void PushBack(Operation* operation) {
    StateOf(operation).next = nullptr;
    if (tail_ == nullptr) {
      head_ = tail_ = operation;
    } else {
      StateOf(tail_).next = operation;
      tail_ = operation;
    }
  }
  Operation* PopFront() {
    Operation* operation = head_;
    if (operation != nullptr) {
      head_ = StateOf(operation).next;
      if (head_ == nullptr) tail_ = nullptr;
      StateOf(operation).next = nullptr;
    }
    return operation;
  }
  // Unlinks `operation` if it is queued here; linear, for the rare cancel.
  bool Remove(Operation* operation) {
    Operation* previous = nullptr;
    for (Operation* current = head_; current != nullptr; current = StateOf(current).next) {
      if (current != operation) {
        previous = current;
        continue;
      }
      (previous == nullptr ? head_ : StateOf(previous).next) = StateOf(current).next;
      if (tail_ == current) tail_ = previous;
      StateOf(current).next = nullptr;
      return true;
    }
    return false;
  }
  // Moves every operation of `other` to the back of this queue.
  void Append(OperationQueue& other) {
    if (other.head_ == nullptr) return;
    if (tail_ == nullptr) {
      head_ = other.head_;
    } else {
      StateOf(tail_).next = other.head_;
    }
    tail_ = other.tail_;
    other.head_ = other.tail_ = nullptr;
  }

 private:
  Operation* head_ = nullptr;
  Operation* tail_ = nullptr;
};

class SubmissionInbox {
 public:
  // Returns true when the inbox was empty before, i.e. the consumer may be asleep and needs a
  // wakeup; later pushes ride on that wakeup.
  bool Push(Operation* operation) {
    Operation* head = head_.load(std::memory_order_relaxed);
    do {
      StateOf(operation).next = head;
    } while (!head_.compare_exchange_weak(head, operation, std::memory_order_release,
                                          std::memory_order_relaxed));
    return head == nullptr;
  }
  // Takes everything pushed so far, oldest first.
  OperationQueue TakeAll() {
    Operation* stack = head_.exchange(nullptr, std::memory_order_acquire);
    Operation* reversed = nullptr;
    while (stack != nullptr) {
      Operation* next = StateOf(stack).next;
      StateOf(stack).next = reversed;
      reversed = stack;
      stack = next;
    }
    OperationQueue queue;
    while (reversed != nullptr) {
      Operation* next = StateOf(reversed).next;
      queue.PushBack(reversed);
      reversed = next;
    }
    return queue;
  }
  bool empty() const { return head_.load(std::memory_order_acquire) == nullptr; }

 private:
  std::atomic<Operation*> head_{nullptr};
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_OPERATION_QUEUE_H_
