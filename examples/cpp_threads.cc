// examples/cpp_threads.cc — one nbdring::Client shared by several application threads.
//
// The threaded mode (the default): the client runs its own ring threads; any thread submits,
// callbacks run on the ring threads. Here four worker threads each write their own 4 MiB
// slice with the zero-allocation Operation API (resubmitting from the callback, 8 in flight
// each), then read it back with the blocking *Sync calls and check it.
//
// Build (after `bazel run //:install -- PREFIX`):
//   c++ -std=c++20 -O2 cpp_threads.cc $(pkg-config --cflags --libs nbdring) -o cpp_threads
// Run: ./cpp_threads nbd+unix:///?socket=/tmp/nbd.sock
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

#include "nbdring/client.h"

namespace {

constexpr uint64_t kBlock = 64 * 1024;
constexpr int kBlocksPerWorker = 64;  // 4 MiB
constexpr int kWorkers = 4;
constexpr int kDepth = 8;

uint8_t ByteAt(uint64_t offset) { return static_cast<uint8_t>(offset * 131 / 9); }

// One request slot of a worker: the Operation the client completes, and where it is.
struct Slot : nbdring::Operation {
  struct Worker* worker = nullptr;
};

struct Worker {
  nbdring::Client* client = nullptr;
  uint64_t base = 0;
  std::atomic<int> next_block{0};
  std::atomic<int> failures{0};
  std::latch done{kDepth};  // each slot counts down once it has nothing left to do
  std::vector<uint8_t> data = std::vector<uint8_t>(kBlocksPerWorker * kBlock);
  Slot slots[kDepth];

  // Issues the next block on `slot`, or retires it.
  void Issue(Slot& slot) {
    const int block = next_block.fetch_add(1);
    if (block >= kBlocksPerWorker) {
      done.count_down();
      return;
    }
    slot.command = nbdring::Command::kWrite;
    slot.offset = base + block * kBlock;
    slot.length = kBlock;
    slot.buffer = data.data() + block * kBlock;
    client->Submit(&slot);
  }

  // Runs on a ring thread.
  static void OnComplete(nbdring::Operation* operation, const absl::Status& status) {
    auto& slot = *static_cast<Slot*>(operation);
    if (!status.ok()) {
      std::fprintf(stderr, "write at %llu: %s\n",
                   static_cast<unsigned long long>(operation->offset),
                   status.ToString().c_str());
      slot.worker->failures.fetch_add(1);
    }
    slot.worker->Issue(slot);
  }

  void Run() {
    for (uint64_t i = 0; i < data.size(); ++i) data[i] = ByteAt(base + i);
    for (Slot& slot : slots) {
      slot.worker = this;
      slot.on_complete = &Worker::OnComplete;
      Issue(slot);
    }
    done.wait();
    std::vector<uint8_t> back(data.size());
    absl::Status read = client->PreadSync(back.data(), back.size(), base);
    if (!read.ok()) {
      std::fprintf(stderr, "read back: %s\n", read.ToString().c_str());
      failures.fetch_add(1);
    } else if (back != data) {
      std::fprintf(stderr, "slice at %llu differs after reading it back\n",
                   static_cast<unsigned long long>(base));
      failures.fetch_add(1);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s NBD-URI\n", argv[0]);
    return 2;
  }
  nbdring::ClientOptions options;
  options.uri = argv[1];
  options.connections = 2;  // used when the server allows multi-conn
  options.threads = 2;
  auto client = nbdring::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }
  for (const std::string& note : (*client)->notes()) std::printf("note: %s\n", note.c_str());
  if ((*client)->size() < kWorkers * kBlocksPerWorker * kBlock) {
    std::fprintf(stderr, "the export is smaller than the %llu bytes this example writes\n",
                 static_cast<unsigned long long>(kWorkers * kBlocksPerWorker * kBlock));
    return 1;
  }
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<Worker>());
    workers.back()->client = client->get();
    workers.back()->base = w * kBlocksPerWorker * kBlock;
    threads.emplace_back([worker = workers.back().get()] { worker->Run(); });
  }
  for (std::thread& thread : threads) thread.join();
  int failures = 0;
  for (const auto& worker : workers) failures += worker->failures.load();
  const nbdring::ClientStats stats = (*client)->stats();
  absl::Status closed = (*client)->Close();  // after every thread that calls it has returned
  if (failures != 0 || !closed.ok()) return 1;
  std::printf("%d threads wrote and read back %llu MiB over %d connection(s): %llu requests, "
              "%llu io_uring_enter calls\n",
              kWorkers,
              static_cast<unsigned long long>(kWorkers * kBlocksPerWorker * kBlock >> 20),
              (*client)->connections(), static_cast<unsigned long long>(stats.requests),
              static_cast<unsigned long long>(stats.enters));
  return 0;
}
