// nbdring/runtime.h — rings shared by many clients: one ring per core serving every export.
//
// A storage node talks to hundreds of exports from a handful of cores. Without a Runtime each
// Client starts ring threads of its own; with one, any number of Clients attach to the same
// rings and their connections are spread over them:
//
//   auto runtime = nbdring::Runtime::Create({.threads = 2});
//   nbdring::ClientOptions options;
//   options.uri = "nbd+unix:///vol17?socket=/run/vol17.sock";
//   auto client = nbdring::Client::Connect(options, *runtime);   // or options.runtime = ...
//
// Contract:
//  * Each connection of an attached client goes to the ring with the fewest connections at the
//    time it connects; a client's requests go to its connections on those rings.
//  * Every ring serves its connections in fair turns: a turn takes at most a bounded amount of
//    work from each connection, so no connection waits behind the others for more than a turn
//    or two (docs/design.md, "Fair turns").
//  * Closing a client (or losing its server) drains and disconnects only that client's
//    connections; requests of the other clients on the same rings go on undisturbed.
//  * The Runtime lives as long as the last of: the caller's shared_ptr and every client
//    attached to it (clients hold a reference). Its ring threads stop when it is destroyed.
//  * Thread-safe: clients may attach and close from any thread at any time.
//  * Callbacks of all attached clients run on the ring threads (or, caller-driven, inside
//    Poll); a blocking call (a *Sync method, Close) from any of them is refused with
//    FailedPreconditionError, since it could wait for the very ring that runs it.
//
// Caller-driven (threads = 0): the thread that creates the Runtime owns its one ring and turns
// it with Poll() (or the attached clients' Client::Poll, which is the same), as for a
// caller-driven Client (nbdring/client.h). No thread is ever created. A client of such a
// runtime may be closed from another thread too: Close then waits for the owner's Polls to
// drain it.
#ifndef NBDRING_RUNTIME_H_
#define NBDRING_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace nbdring {

struct RuntimeOptions {
  // Ring threads, named "nbdring-ring-N". 0: caller-driven, no threads (see above).
  int threads = 1;
  // CPUs to pin the ring threads to: ring N runs on ring_cpus[N % ring_cpus.size()].
  std::vector<int> ring_cpus;
  // Completion batching, for every ring of the runtime: see ClientOptions, whose fields of
  // these names a client with a runtime does not use.
  absl::Duration completion_batch_delay = absl::Microseconds(50);
  uint32_t completion_batch_min_in_flight = 8;
};

// Counters of the runtime's rings, each counted once (a client's ClientStats repeats the
// counters of every ring it is on, other clients' work included).
struct RuntimeStats {
  uint64_t enters = 0;   // io_uring_enter calls
  uint64_t sqes = 0;     // SQEs submitted
  uint64_t cqes = 0;
  uint64_t wakeups = 0;  // cross-thread submissions that had to wake a ring
};

class Runtime {
 public:
  // Starts the rings (the kernel probe runs here; errors say why io_uring is unusable).
  static absl::StatusOr<std::shared_ptr<Runtime>> Create(const RuntimeOptions& options = {});
  virtual ~Runtime();

  // Ring threads (0 when caller-driven).
  virtual int threads() const = 0;
  // Connections of the clients attached now.
  virtual int connections() const = 0;
  // Which kernel paths the rings took (as in Client::notes()).
  virtual std::vector<std::string> notes() const = 0;
  virtual RuntimeStats stats() const = 0;

  // Caller-driven only, on the thread that created the runtime: one turn of its ring for all
  // attached clients, waiting at most `timeout`; and a file descriptor readable when a Poll
  // has work. FailedPrecondition (-1 for fd()) otherwise.
  virtual absl::Status Poll(absl::Duration timeout) = 0;
  virtual int fd() = 0;

  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

 protected:
  Runtime() = default;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_H_
