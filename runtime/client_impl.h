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
#include "runtime/connection_group.h"
#include "runtime/ring_loop.h"
#include "runtime/ring_pool.h"
#include "runtime/server_command.h"
#include "runtime/socket.h"

namespace nbdring {

// Who calls a *Sync method: from a callback it must refuse; on the polling thread of a
// caller-driven client it turns the loop itself until its request is done.
struct SyncCaller {
  bool in_callback = false;
  RingLoop* drive = nullptr;
};

// The client's connections on one loop of its pool.
struct Attachment {
  RingLoop* loop = nullptr;
  std::unique_ptr<ConnectionGroup> group;
};

class Client::Impl {
 public:
  ClientOptions options;
  std::string address_text;
  // The rings: the shared Runtime's (ClientOptions::runtime) or a private pool made for this
  // client. Declared before `attachments`, so the groups go first: the pool's loops outlive
  // every group that was attached to them.
  std::shared_ptr<RingPool> pool;
  bool private_pool = false;
  std::vector<Attachment> attachments;  // one per loop this client's connections are on
  std::atomic<uint32_t> next_attachment{0};
  std::atomic<uint64_t> next_submission_id{1};
  std::atomic<bool> closed{false};
  // Submit() calls between their check of `closed` and handing the operation to a ring.
  // Close() waits for this to drain after setting `closed`, so no operation can reach a ring
  // after its group was detached (see Submit).
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
    if (pool == nullptr) return caller;
    caller.in_callback = pool->CurrentLoop() != nullptr;
    if (pool->polled() != nullptr && pool->polled()->on_this_thread()) {
      caller.drive = pool->polled();
    }
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

  // Inside a callback: this client's attachment on the loop running it (nullptr when this
  // client has no connections there, or outside callbacks).
  Attachment* CurrentAttachment() {
    if (pool == nullptr) return nullptr;
    RingLoop* loop = pool->CurrentLoop();
    if (loop == nullptr) return nullptr;
    for (Attachment& attachment : attachments) {
      if (attachment.loop == loop) return &attachment;
    }
    return nullptr;
  }
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_CLIENT_IMPL_H_
