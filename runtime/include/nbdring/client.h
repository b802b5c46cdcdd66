// nbdring/client.h — the NBD client that storage appliances embed.
//
// A Client talks to one export over one or more connections (multi-conn, when the server
// advertises NBD_FLAG_CAN_MULTI_CONN) driven by one or more ring threads, each owning an
// io_uring. Requests are batched: everything issued during one turn of a ring's loop goes out
// with one io_uring_enter.
//
// Two ways to issue a request:
//  * Operation (zero allocation): the caller owns an nbdring::Operation, fills in the
//    command, range, buffer and `on_complete`, and calls Submit(). The object must stay alive
//    and unmoved until `on_complete` runs. This is the hot path the benchmark uses.
//  * Convenience calls (Pread, Pwrite, ...): take an absl::AnyInvocable callback; the client
//    allocates the Operation for you (one allocation per call). The *Sync variants block the
//    calling thread until the request completes.
//
// Threading contract:
//  * Submit()/Pread()/... may be called from any thread, including from inside a callback.
//    From a ring thread of this client they go straight to that ring; from other threads
//    through a lock-free queue plus a wakeup of the ring.
//  * Every callback runs on a ring thread, exactly once, after that ring has drained its
//    completion queue (never from inside Submit). The one exception: Submit after Close()
//    has no ring left to run on, so it completes the request with UnavailableError on the
//    calling thread before returning. Callbacks must not block: a blocking call
//    (a *Sync method, Close) from a ring thread returns FailedPreconditionError.
//  * Every request completes exactly once — with the server's answer, with an error naming
//    what the server did wrong, or with UnavailableError when its connection died or the
//    client closed. Nothing is dropped silently.
//
// Caller-driven mode (ClientOptions::threads = 0), for event loops that allow no threads
// they did not create (libnbd's nbd_aio_* + nbd_poll style):
//  * Connect runs on the caller's thread (it blocks for the connect and handshake, bounded by
//    connect_timeout) and that thread becomes the ring's owner: Poll, Close, fd() and the
//    destructor must run on it. Submit/Cancel/the convenience calls may come from any thread.
//  * Poll(timeout) sends what was submitted, waits up to `timeout` for replies (completion
//    batching included) and runs their callbacks, on the calling thread, before returning.
//  * fd() is an eventfd to put into the caller's epoll/poll: readable whenever a Poll has
//    work (replies arrived, requests submitted, a cancel to carry out); then call Poll with a
//    zero timeout. A caller that blocks inside Poll instead need not ask for it (asking turns
//    on notifications that cost a syscall or two per Poll).
//  * *Sync calls on the owner thread turn the ring themselves until their request is done;
//    from other threads they wait for the owner's Poll to complete them.
//  * Close on the owner thread turns the ring until everything completed (close_timeout).
//  * With `reconnect`, a lost connection is re-established inside Poll's turns, no thread.
//
// Buffers: a read's buffer receives data straight from the socket when the payload is large
// (no copy); small payloads are copied from the connection's receive buffer. A write's buffer
// is sent from where it lies. Buffers belong to the client from Submit until the callback.
#ifndef NBDRING_CLIENT_H_
#define NBDRING_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "nbd/export_info.h"
#include "nbd/uri.h"
#include "nbd/wire.h"
#include "nbdring/client_stats.h"
#include "nbdring/log_level.h"
#include "nbdring/operation.h"
#include "nbdring/runtime.h"

namespace nbdring {

using nbd::ExportInfo;

struct ClientOptions {
  // Where to connect: an NBD URI (nbd://, nbd+unix://, nbd+vsock://, and nbds://,
  // nbds+unix://, nbds+vsock:// for TLS). Alternatively fill `address` directly.
  std::string uri;
  nbd::NbdUri address;  // used when `uri` is empty

  // Connections to open. More than one only if the server advertises CAN_MULTI_CONN; the
  // client then says so in Client::notes(). 0 means 1.
  int connections = 1;
  // Rings shared with other clients (nbdring/runtime.h). With one, the client starts no rings
  // of its own: its connections go to the runtime's rings, and `threads`, `ring_cpus` and the
  // completion_batch_* fields below are the runtime's business (ignored here). Null: the
  // client makes private rings as those fields say.
  std::shared_ptr<Runtime> runtime;
  // Ring threads; connections are spread over them round-robin. They are named
  // "nbdring-ring-N" (N from 0), as ps and top show them.
  // 0: caller-driven — no thread is ever created. The thread that calls Connect owns the one
  // ring (all connections) and turns it with Poll(); callbacks run inside Poll on that thread.
  // See "Caller-driven mode" below. Not with `ring_cpus`; with `reconnect`, attempts run
  // inside Poll too (no thread either).
  int threads = 1;
  // CPUs to pin the ring threads to: ring N runs on ring_cpus[N % ring_cpus.size()]. Empty:
  // not pinned. A CPU this process may not use fails Connect with InvalidArgument.
  std::vector<int> ring_cpus;
  // Requests in flight per connection, 1 to 65536 (the in-flight table's capacity). Further
  // requests wait in a queue and go out as slots free.
  // 0 ("auto"): each connection finds its own limit while it runs, between 1 and 256, from
  // the throughput it observes: it keeps a higher limit only while that buys throughput and
  // a lower one while that costs none, and re-probes a few times a second because servers
  // change (runtime/inflight_limiter.h; docs/performance.md, "Choosing the in-flight
  // limit"). ClientStats::inflight_limit says where it is.
  // A URI with inflight_limit=N|auto (nbd/uri.h) replaces this value.
  uint32_t inflight_limit = 64;
  // Meta contexts to negotiate, e.g. {"base:allocation"}; needed for BlockStatus().
  std::vector<std::string> meta_contexts;
  bool structured_replies = true;
  bool extended_headers = false;

  // TLS (GnuTLS in user space; the socket I/O stays on io_uring and keeps its batching).
  // kDefault: kRequire for nbds URIs, kDisable for nbd. kAllow: STARTTLS when the server
  // offers it, plain text when it refuses. kRequire never falls back to plain text: an
  // oldstyle server, one without fixed newstyle or one refusing STARTTLS fails Connect.
  // The URI query keys tls-certificates, tls-psk-file, tls-username, tls-hostname and
  // tls-verify-peer=0 (libnbd's names) fill the fields below that are left empty.
  enum class Tls { kDefault, kDisable, kAllow, kRequire };
  Tls tls = Tls::kDefault;
  // Directory laid out as libnbd, QEMU and nbdkit expect: ca-cert.pem (trusted CAs), and
  // client-cert.pem + client-key.pem when the server wants a client certificate. Empty: the
  // system's trusted CAs.
  std::string tls_certificates;
  // Pre-shared key file as psktool writes it ("username:hexkey" lines); selects PSK instead
  // of X.509.
  std::string tls_psk_file;
  // PSK identity. Empty: the login name, or the file's only entry.
  std::string tls_username;
  // The name the server's certificate must carry. Empty: the URI's TCP host; over Unix
  // sockets and vsock only the certificate chain is checked then.
  std::string tls_hostname;
  // Verify the server's certificate (chain, validity, name). Turning it off accepts any
  // certificate, which defeats TLS against an active attacker.
  bool tls_verify_peer = true;

  // Every duration below may be absl::InfiniteDuration() (no limit).
  absl::Duration connect_timeout = absl::Seconds(10);  // connect + handshake, per connection
  // Per-request timeout; zero means none. A request that times out completes with
  // DeadlineExceededError and its connection is closed (the server may still answer it).
  absl::Duration request_timeout = absl::ZeroDuration();
  // How long Close() lets requests already submitted finish. After it, connections still
  // busy are shut down and their requests complete with UnavailableError, so Close()
  // returns within about this bound even against a server that stopped answering.
  absl::Duration close_timeout = absl::Seconds(30);
  // Receive buffer per connection, at most. On Linux 5.19+ without TLS, connections receive
  // into 32 KiB buffers their ring shares (an idle connection holds none), and one whose
  // receive fills a shared buffer gets its own; otherwise each has its own from the start.
  // Its own starts small (16 or 64 KiB) and doubles up to this each time a receive fills
  // it, so lightly loaded connections stay small. Read payloads at least
  // `direct_receive_bytes` long go straight into the caller's buffer; smaller ones are
  // copied out of this buffer, which lets one receive carry many replies.
  uint32_t receive_buffer_bytes = 256 * 1024;
  uint32_t direct_receive_bytes = 16 * 1024;
  // Reconnect (off by default): when a connection to the server is lost (EOF, socket
  // error), the requests in flight on it are kept and re-sent once a new connection has
  // negotiated the same export, as QEMU's reconnect-delay does. Attempts back off from
  // 100 ms to 2 s. Requests on that connection, and new ones that find no other connection,
  // wait at most `reconnect_delay` from the loss; then they fail with UnavailableError.
  // Each attempt is bounded by `connect_timeout`. Protocol violations and request timeouts
  // still close the connection for good. With ring threads an attempt runs on a short-lived
  // helper thread; in caller-driven mode (threads = 0) it runs as non-blocking steps inside
  // Poll, woken by the ring (the socket's readiness, the back-off's end), so fd() turns
  // readable for it too. A TCP host name is resolved again for each attempt (getaddrinfo,
  // which may wait for DNS: give a numeric address to rule that out).
  bool reconnect = false;
  absl::Duration reconnect_delay = absl::Seconds(30);
  // At most this many connect attempts per loss (0: as many as fit in reconnect_delay).
  int reconnect_attempts = 0;
  // Diagnostics. `log` receives every message at or above `log_level`; it is called from the
  // thread calling Connect, from ring threads and from reconnect attempts, possibly at the
  // same time, so it must be thread-safe, and it should return quickly (kDebug calls it twice
  // per request). With no `log`, the environment variable NBDRING_DEBUG=1 prints kDebug and
  // above to stderr as "nbdring: <message>". Nothing is logged otherwise, and a request
  // costs one predictable branch for it.
  LogHook log;
  LogLevel log_level = LogLevel::kInfo;

  // Completion batching: while a ring has at least `completion_batch_min_in_flight` requests
  // in flight, it waits a little for more replies before waking, so one wakeup handles many
  // replies. The wait is sized from the observed reply rate so that about 1/16 of the
  // requests in flight complete during it, and is at most `completion_batch_delay`; reads
  // and writes with payloads of `direct_receive_bytes` or more are never batched (their
  // transfer needs the ring awake). Each ring also measures whether batching pays (it does
  // not when the client shares a core with a local server): every ~0.8 s at first, and less
  // often while the answer stays clear, it runs 10 ms in the other mode, and it stops
  // batching while not batching gives over 1.1 times the reply rate (see batch_window.h).
  // Zero delay turns batching off (lowest latency, most wakeups).
  absl::Duration completion_batch_delay = absl::Microseconds(50);
  uint32_t completion_batch_min_in_flight = 8;
};

class Client {
 public:
  // Connects, negotiates, and starts the ring threads. Errors name the stage that failed
  // (URI, connect, handshake with the server's reply, io_uring set-up and why).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  // The same with `options.runtime = runtime`: the client's connections join the runtime's
  // rings (nbdring/runtime.h).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options,
                                                         std::shared_ptr<Runtime> runtime);
  // Negotiates over `fd`, a stream socket the caller already connected to the server (Unix,
  // TCP, vsock, or one end of a socketpair): for servers reached in ways a URI cannot say,
  // or inherited sockets. The client owns `fd` from this call on, even when it fails. One
  // connection (a note says so when more were asked for); `reconnect` is refused. The export
  // name and TLS settings come from `options` (its `uri`, or `address` when `uri` is empty).
  static absl::StatusOr<std::unique_ptr<Client>> ConnectSocket(int fd,
                                                               const ClientOptions& options);
  // Starts `argv` (argv[0] looked up in PATH) as a child process whose stdin and stdout are
  // one end of a socketpair, and negotiates over the other — for servers that serve one
  // client on stdin/stdout, such as `nbdkit -s memory 1G` (libnbd's nbd_connect_command).
  // Close() ends it: the server sees EOF; one still running a second later gets SIGKILL;
  // either way it is reaped. Otherwise as ConnectSocket.
  static absl::StatusOr<std::unique_ptr<Client>> ConnectCommand(
      const std::vector<std::string>& argv, const ClientOptions& options);

  // Lets the requests already submitted finish (for up to ClientOptions::close_timeout;
  // those still unanswered then complete with UnavailableError), sends NBD_CMD_DISC, closes
  // every connection and stops the ring threads. A reconnect attempt in progress is aborted
  // at once. Returns when every callback has run. Idempotent; any thread but the client's
  // own ring threads: from a callback it returns FailedPreconditionError and does nothing
  // (it would wait for itself) — and the Client must not be destroyed from a callback either.
  //
  // An operation can complete (on a ring thread) before the Submit() that queued it has
  // returned on the submitting thread. So "my last operation completed" does not mean "no
  // thread is inside a call on this client": destroy the client only after every thread that
  // calls it is known to have returned (nbd-copy's Copier counts its calls for this).
  ~Client();
  absl::Status Close();

  // Caller-driven mode only (threads = 0; see the top of this file). One turn of the ring:
  // sends what was submitted, waits at most `timeout` for completions (zero: only what is
  // there; InfiniteDuration: until something completes), runs the callbacks. Returns
  // FailedPrecondition for a client with ring threads, on another thread than the one that
  // connected, from a callback, or after Close.
  absl::Status Poll(absl::Duration timeout);
  // Caller-driven mode: a file descriptor that is readable when Poll has work; -1 for a
  // client with ring threads or on another thread than the one that connected. The client
  // owns it (do not close it); the caller only waits for it to be readable.
  int fd();

  const ExportInfo& export_info() const { return info_; }
  uint64_t size() const { return info_.size; }
  int connections() const;
  int threads() const;
  // Decisions the client made that the user should know about (e.g. "server does not
  // advertise NBD_FLAG_CAN_MULTI_CONN: using 1 connection instead of 4").
  const std::vector<std::string>& notes() const { return notes_; }
  ClientStats stats() const;
  // The same counters per connection, in connection order. enters/sqes/cqes/wakeups belong
  // to a ring, which all its connections share: each connection reports its ring's.
  std::vector<ClientStats> connection_stats() const;

  // Validates and queues `operation`, and returns the id of this submission: unique among
  // this client's submissions (never 0), and the name Cancel() takes. A request the export
  // cannot take (read-only, flag not advertised, out of range, zero length, misaligned to the
  // minimum block size, ...) completes through on_complete with
  // InvalidArgument/FailedPrecondition/OutOfRange without being sent.
  //
  // After Close() has begun, Submit never queues: the operation completes with
  // UnavailableError — on the calling thread, before Submit returns, when no ring will run
  // again; otherwise on its ring thread like any other completion. Either way exactly once.
  uint64_t Submit(Operation* operation);
  // Asks for submission `submission_id` of `operation` (the value Submit returned) to
  // complete early with CancelledError. Returns at once; the completion arrives through
  // on_complete on a ring thread as usual, and not before no kernel operation refers to the
  // caller's buffer any more. A request still waiting for an in-flight slot is never sent.
  // One already sent cannot be taken back (NBD has no such command): it completes at once,
  // the server may still carry it out, and its reply is discarded.
  // A stale id is harmless: when that submission already completed — even if the same
  // Operation has been submitted again since, from its callback or any thread — nothing
  // happens. The Operation is only ever dereferenced by the ring that holds it.
  void Cancel(Operation* operation, uint64_t submission_id);
  // The same checks, synchronously, without queueing anything.
  absl::Status Validate(const Operation& operation) const;

  using Callback = absl::AnyInvocable<void(absl::Status)>;
  using ExtentsCallback = absl::AnyInvocable<void(uint32_t context_id, absl::Span<const Extent>)>;
  void Pread(void* buffer, uint64_t length, uint64_t offset, Callback done, uint16_t flags = 0);
  void Pwrite(const void* buffer, uint64_t length, uint64_t offset, Callback done,
              uint16_t flags = 0);
  void Flush(Callback done);
  void Trim(uint64_t length, uint64_t offset, Callback done, uint16_t flags = 0);
  void WriteZeroes(uint64_t length, uint64_t offset, Callback done, uint16_t flags = 0);
  void Cache(uint64_t length, uint64_t offset, Callback done);
  void BlockStatus(uint64_t length, uint64_t offset, ExtentsCallback extents, Callback done,
                   uint16_t flags = 0);

  absl::Status PreadSync(void* buffer, uint64_t length, uint64_t offset, uint16_t flags = 0);
  absl::Status PwriteSync(const void* buffer, uint64_t length, uint64_t offset,
                          uint16_t flags = 0);
  absl::Status FlushSync();
  absl::Status TrimSync(uint64_t length, uint64_t offset, uint16_t flags = 0);
  absl::Status WriteZeroesSync(uint64_t length, uint64_t offset, uint16_t flags = 0);
  absl::Status CacheSync(uint64_t length, uint64_t offset);
  // Collects the extents of every context into `extents` (context id -> list, in order).
  absl::Status BlockStatusSync(uint64_t length, uint64_t offset,
                               std::vector<std::pair<uint32_t, std::vector<Extent>>>* extents,
                               uint16_t flags = 0);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

 private:
  class Impl;
  Client() = default;
  static absl::StatusOr<std::unique_ptr<Client>> ConnectWith(const ClientOptions& options,
                                                             std::unique_ptr<Impl> given);
  ExportInfo info_;
  std::vector<std::string> notes_;
  std::unique_ptr<Impl> impl_;
};

// Negotiation-only helpers for tools such as nbd-info. QueryExport negotiates like Connect
// (NBD_OPT_GO) and ends with NBD_CMD_DISC; ListExports uses NBD_OPT_LIST and NBD_OPT_ABORT.
struct ExportQuery {
  ExportInfo info;
  std::vector<std::string> available_meta_contexts;  // LIST_META_CONTEXT for the queries
};
absl::StatusOr<ExportQuery> QueryExport(const ClientOptions& options);
absl::StatusOr<std::vector<nbd::ExportListing>> ListExports(const ClientOptions& options);

}  // namespace nbdring

#endif  // NBDRING_CLIENT_H_
