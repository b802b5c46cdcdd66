#include "runtime/ring_thread.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace nbdring {

absl::StatusOr<std::unique_ptr<RingThread>> RingThread::Start(const RingOptions& options) {
  std::unique_ptr<RingThread> ring_thread(new RingThread());
  std::atomic<int> started{0};
  absl::Status start_status;
  RingThread* self = ring_thread.get();
  ring_thread->thread_ =
      std::thread([self, &options, &started, &start_status] {
        self->Run(&options, &started, &start_status);
      });
  started.wait(0, std::memory_order_acquire);
  if (!start_status.ok()) {
    ring_thread->thread_.join();
    return start_status;
  }
  return ring_thread;
}

void RingThread::Run(const RingOptions* options, std::atomic<int>* started,
                     absl::Status* start_status) {
  auto report_started = [started] {
    started->store(1, std::memory_order_release);
    started->notify_one();
  };
  pthread_setname_np(pthread_self(), absl::StrCat("nbdring-ring-", options->index).c_str());
  if (options->cpu >= 0) {
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(options->cpu, &cpus);
    if (int error = pthread_setaffinity_np(pthread_self(), sizeof(cpus), &cpus); error != 0) {
      *start_status = absl::InvalidArgumentError(absl::StrCat(
          "ring_cpus: cannot pin ring thread ", options->index, " to CPU ", options->cpu, ": ",
          std::strerror(error)));
      report_started();
      return;
    }
  }
  auto loop = RingLoop::Create(*options);
  if (!loop.ok()) {
    *start_status = loop.status();
    report_started();
    return;
  }
  loop_ = *std::move(loop);
  RingLoop* running = loop_.get();
  report_started();  // Start's arguments are gone after this
  while (running->Turn(-1)) {
  }
}

RingThread::~RingThread() {
  if (loop_ != nullptr) loop_->RequestClose();
  Join();
  loop_.reset();
}

void RingThread::Join() {
  if (thread_.joinable()) thread_.join();
}

}  // namespace nbdring
