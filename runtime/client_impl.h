// runtime/client_impl.h — the state behind a nbdring::Client (nbdring/client.h keeps it
// opaque): its rings and who turns them, the submission bookkeeping Close() relies on, and
// what ConnectSocket/ConnectCommand handed over. Private to the library.
#ifndef NBDRING_RUNTIME_CLIENT_IMPL_H_
#define NBDRING_RUNTIME_CLIENT_IMPL_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "nbdring/client.h"
#include "runtime/logger.h"
#include "runtime/ring_loop.h"
#include "runtime/ring_thread.h"
#include "runtime/server_command.h"
#include "runtime/socket.h"

namespace nbdring {

// Who calls a *Sync method: from a callback it must refuse; on the polling thread of a
// caller-driven client it turns the loop itself until its request is done.
struct SyncCaller {
  bool in_callback = false;
  RingLoop* drive = nullptr;
};

class Client::Impl {
 public:
  ClientOptions options;
  std::string address_text;
  // Threaded mode: the threads that turn the loops. Caller-driven mode (threads = 0): none,
  // and `polled` is the one loop, turned by Poll() on the thread that connected.
  std::vector<std::unique_ptr<RingThread>> ring_threads;
  std::unique_ptr<RingLoop> polled;
  std::vector<RingLoop*> rings;  // every loop, either way
  std::atomic<uint32_t> next_ring{0};
  std::atomic<uint64_t> next_submission_id{1};
  std::atomic<bool> closed{false};
  // Submit() calls between their check of `closed` and handing the operation to a ring.
  // Close() waits for this to drain after setting `closed`, so no operation can reach a ring
  // that has stopped taking its inbox (see Submit).
  std::atomic<uint32_t> submits_in_progress{0};
  int connection_count = 0;
  std::shared_ptr<const Logger> logger;
  // ConnectSocket/ConnectCommand: the socket to negotiate over instead of connecting, what to
  // call it in messages, and the server process ConnectCommand started (reaped by Close).
  FileDescriptor given_socket;
  std::string given_description;
  pid_t child = -1;

  SyncCaller sync_caller() const {
    SyncCaller caller;
    caller.in_callback = CurrentRing() != nullptr;
    if (polled != nullptr && polled->on_this_thread()) caller.drive = polled.get();
    return caller;
  }

  ~Impl() { ReapChild(); }
  // The server ConnectCommand started sees EOF once the connections are closed and should
  // exit; one that does not within a second is killed. Always waited for: no zombie.
  void ReapChild() {
    if (child <= 0) return;
    given_socket = FileDescriptor();  // if the handshake never took it
    EndServerCommand(child, absl::Seconds(1));
    child = -1;
  }

  // The loop whose callback is calling (inside a turn on its thread), or nullptr.
  RingLoop* CurrentRing() const {
    for (RingLoop* ring : rings) {
      if (ring->in_turn_on_this_thread()) return ring;
    }
    return nullptr;
  }
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_CLIENT_IMPL_H_
