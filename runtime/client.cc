#include <sched.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nbd/handshake.h"
#include "nbd/request.h"
#include "nbdring/client.h"
#include "runtime/clock.h"
#include "runtime/connection.h"
#include "runtime/logger.h"
#include "runtime/operation_state.h"
#include "runtime/ring_thread.h"
#include "runtime/server_command.h"
#include "runtime/socket.h"
#include "runtime/tls_context.h"
#include "runtime/tls_session.h"

namespace nbdring {

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

  // Who calls a *Sync method: from a callback it must refuse; on the polling thread of a
  // caller-driven client it turns the loop itself until its request is done.
  struct SyncCaller {
    bool in_callback = false;
    RingLoop* drive = nullptr;
  };
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

namespace {

absl::StatusOr<nbd::NbdUri> ResolveAddress(const ClientOptions& options) {
  if (options.uri.empty()) return options.address;
  return nbd::ParseNbdUri(options.uri);
}

// What TLS a client uses, decided once from its options and URI.
struct TlsPlan {
  nbd::HandshakeOptions::Tls mode = nbd::HandshakeOptions::Tls::kDisable;
  std::shared_ptr<const TlsContext> context;  // null when mode is kDisable
};

absl::StatusOr<TlsPlan> PlanTls(const ClientOptions& options, const nbd::NbdUri& address) {
  using Tls = nbd::HandshakeOptions::Tls;
  TlsPlan plan;
  switch (options.tls) {
    case ClientOptions::Tls::kDefault:
      plan.mode = address.tls ? Tls::kRequire : Tls::kDisable;
      break;
    case ClientOptions::Tls::kDisable:
      if (address.tls) {
        return absl::InvalidArgumentError(absl::StrCat(
            address.ToString(), " requires TLS (nbds), but the options disable it"));
      }
      plan.mode = Tls::kDisable;
      break;
    case ClientOptions::Tls::kAllow:
      plan.mode = address.tls ? Tls::kRequire : Tls::kAllow;
      break;
    case ClientOptions::Tls::kRequire:
      plan.mode = Tls::kRequire;
      break;
  }
  if (plan.mode == Tls::kDisable) return plan;
  auto from_uri = [&](const std::string& field, const char* key) {
    if (!field.empty()) return field;
    auto found = address.tls_options.find(key);
    return found == address.tls_options.end() ? std::string() : found->second;
  };
  TlsSettings settings;
  settings.certificates_dir = from_uri(options.tls_certificates, "tls-certificates");
  settings.psk_file = from_uri(options.tls_psk_file, "tls-psk-file");
  settings.username = from_uri(options.tls_username, "tls-username");
  settings.hostname = from_uri(options.tls_hostname, "tls-hostname");
  if (settings.hostname.empty() && address.transport == nbd::NbdUri::Transport::kTcp) {
    settings.hostname = address.host.empty() ? "localhost" : address.host;
  }
  auto verify = address.tls_options.find("tls-verify-peer");
  settings.verify_peer =
      options.tls_verify_peer && (verify == address.tls_options.end() || verify->second != "0");
  auto type = address.tls_options.find("tls-type");
  if (type != address.tls_options.end()) {
    if (type->second == "anon") {
      return absl::InvalidArgumentError(
          "tls-type=anon (TLS without authentication) is not supported: use x509 or psk");
    }
    if (type->second == "psk" && settings.psk_file.empty()) {
      return absl::InvalidArgumentError("tls-type=psk needs tls-psk-file");
    }
    if (type->second == "x509" && !settings.psk_file.empty()) {
      return absl::InvalidArgumentError("tls-type=x509 conflicts with tls-psk-file");
    }
  }
  auto context = TlsContext::Create(settings);
  if (!context.ok()) return context.status();
  plan.context = *std::move(context);
  return plan;
}

nbd::HandshakeOptions MakeHandshakeOptions(const ClientOptions& options,
                                           const nbd::NbdUri& address,
                                           nbd::HandshakeOptions::Goal goal,
                                           const TlsPlan& tls) {
  nbd::HandshakeOptions handshake;
  handshake.tls = tls.mode;
  handshake.goal = goal;
  handshake.export_name = address.export_name;
  handshake.structured_replies = options.structured_replies;
  handshake.extended_headers = options.extended_headers;
  handshake.meta_contexts = options.meta_contexts;
  handshake.request_block_size = true;
  return handshake;
}

struct Negotiated {
  FileDescriptor fd;
  std::unique_ptr<TlsSession> tls;  // null for plain text
  nbd::ExportInfo info;
  std::vector<nbd::ExportListing> exports;
  std::vector<std::string> meta_contexts;
};

absl::StatusOr<Negotiated> OpenAndNegotiate(const ClientOptions& options,
                                            const nbd::NbdUri& address,
                                            nbd::HandshakeOptions::Goal goal,
                                            const TlsPlan& tls, int abort_fd = -1,
                                            FileDescriptor* given_socket = nullptr) {
  absl::Time deadline = absl::Now() + options.connect_timeout;
  absl::StatusOr<FileDescriptor> fd =
      given_socket != nullptr ? absl::StatusOr<FileDescriptor>(std::move(*given_socket))
                              : ConnectTo(address, deadline, abort_fd);
  if (!fd.ok()) return fd.status();
  nbd::Handshake handshake(MakeHandshakeOptions(options, address, goal, tls));
  std::unique_ptr<TlsSession> session;
  absl::Status status = RunHandshake(fd->get(), handshake, deadline, abort_fd, tls.context, &session);
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("handshake with ", address.ToString(),
                                                    " failed: ", status.message()));
  }
  Negotiated negotiated{*std::move(fd), std::move(session), handshake.export_info(),
                        handshake.exports(), handshake.listed_meta_contexts()};
  return negotiated;
}

struct CallbackOperation : Operation {
  Client::Callback done;
  Client::ExtentsCallback extents;
};

void OnCallbackOperationComplete(Operation* operation, const absl::Status& status) {
  auto* owned = static_cast<CallbackOperation*>(operation);
  Client::Callback done = std::move(owned->done);
  delete owned;
  done(status);
}

void OnCallbackOperationExtents(Operation* operation, uint32_t context_id,
                                absl::Span<const Extent> extents) {
  auto* owned = static_cast<CallbackOperation*>(operation);
  if (owned->extents) owned->extents(context_id, extents);
}

struct SyncOperation : Operation {
  std::atomic<bool> done{false};
  absl::Status status;
  std::vector<std::pair<uint32_t, std::vector<Extent>>>* extents = nullptr;
};

// A copy of `status` that shares nothing with it (code, message and payloads, such as the
// server's NBD error). The waiting thread gets its own: copies of one absl::Status share a
// reference-counted representation, and ThreadSanitizer cannot see the count inside
// Debian's uninstrumented Abseil, so a status the ring thread releases after waking the
// waiter shows up there as a race (docs/embedding.md).
absl::Status UnsharedCopy(const absl::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status copy(status.code(), std::string(status.message()));
  status.ForEachPayload([&copy](absl::string_view type_url, const absl::Cord& payload) {
    copy.SetPayload(type_url, absl::Cord(std::string(payload)));
  });
  return copy;
}

void OnSyncComplete(Operation* operation, const absl::Status& status) {
  auto* sync = static_cast<SyncOperation*>(operation);
  sync->status = UnsharedCopy(status);
  sync->done.store(true, std::memory_order_release);
  sync->done.notify_one();
}

void OnSyncExtents(Operation* operation, uint32_t context_id, absl::Span<const Extent> extents) {
  auto* sync = static_cast<SyncOperation*>(operation);
  if (sync->extents != nullptr) {
    sync->extents->emplace_back(context_id, std::vector<Extent>(extents.begin(), extents.end()));
  }
}

// The same meta contexts by name (ids may differ: the spec lets a server number them per
// connection).
bool SameMetaContextNames(const ExportInfo& a, const ExportInfo& b) {
  if (a.meta_contexts.size() != b.meta_contexts.size()) return false;
  for (const nbd::MetaContext& context : a.meta_contexts) {
    if (b.FindMetaContext(context.name) == nullptr) return false;
  }
  return true;
}

// A duration for the rings, where "no limit" (infinite, or zero when `zero_is_none`) is
// `none_ns`.
int64_t RingNanoseconds(absl::Duration duration, bool zero_is_none, int64_t none_ns) {
  if (duration == absl::InfiniteDuration()) return none_ns;
  if (zero_is_none && duration <= absl::ZeroDuration()) return none_ns;
  return std::max<int64_t>(absl::ToInt64Nanoseconds(duration), 0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  return ConnectWith(options, std::make_unique<Impl>());
}

absl::StatusOr<std::unique_ptr<Client>> Client::ConnectSocket(int fd,
                                                              const ClientOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->given_socket = FileDescriptor(fd);  // ours from here, even on failure
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("ConnectSocket: bad fd ", fd));
  // The handshake waits with poll(); the ring takes the socket over afterwards.
  if (absl::Status nonblocking = SetNonBlocking(fd); !nonblocking.ok()) return nonblocking;
  impl->given_description = absl::StrCat("socket fd ", fd);
  return ConnectWith(options, std::move(impl));
}

absl::StatusOr<std::unique_ptr<Client>> Client::ConnectCommand(
    const std::vector<std::string>& argv, const ClientOptions& options) {
  auto impl = std::make_unique<Impl>();
  auto started = StartServerCommand(argv);
  if (!started.ok()) return started.status();
  impl->given_socket = std::move(started->socket);
  impl->child = started->pid;
  impl->given_description = absl::StrCat("command '", absl::StrJoin(argv, " "), "'");
  auto client = ConnectWith(options, std::move(impl));
  return client;  // on failure Impl's destructor closed the socket and reaped the server
}

absl::StatusOr<std::unique_ptr<Client>> Client::ConnectWith(const ClientOptions& options,
                                                            std::unique_ptr<Impl> given) {
  const bool over_given_socket = given->given_socket.get() >= 0;
  if (over_given_socket && options.reconnect) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reconnect needs an address to connect to again; ", given->given_description,
        " cannot be re-established"));
  }
  auto address = ResolveAddress(options);
  if (!address.ok()) return address.status();
  if (options.inflight_limit > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inflight_limit must be between 1 and 65536, or 0 for automatic, got ",
        options.inflight_limit));
  }
  if (options.receive_buffer_bytes < 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "receive_buffer_bytes must be at least 4096, got ", options.receive_buffer_bytes));
  }
  if (!options.ring_cpus.empty()) {
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) CPU_ZERO(&allowed);
    for (int cpu : options.ring_cpus) {
      if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ring_cpus: CPU ", cpu, " is not one this process may run on (",
            CPU_COUNT(&allowed), " allowed)"));
      }
    }
  }
  int wanted_connections = std::max(options.connections, 1);
  const bool caller_driven = options.threads == 0;
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "threads must be 0 (caller-driven: Poll) or a number of ring threads, got ",
        options.threads));
  }
  if (caller_driven && options.reconnect) {
    return absl::InvalidArgumentError(
        "reconnect needs ring threads (threads >= 1): in caller-driven mode (threads = 0) a "
        "lost connection is not re-established");
  }
  if (caller_driven && !options.ring_cpus.empty()) {
    return absl::InvalidArgumentError(
        "ring_cpus needs ring threads (threads >= 1): with threads = 0 the ring runs on the "
        "caller's thread, which the caller pins");
  }
  int threads = std::max(options.threads, 1);
  if (wanted_connections > 1024 || threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat("connections (", wanted_connections,
                                                   ") must be <= 1024 and threads (", threads,
                                                   ") <= 256"));
  }

  std::unique_ptr<Client> client(new Client());
  client->impl_ = std::move(given);
  Impl& impl = *client->impl_;
  impl.options = options;
  impl.address_text = over_given_socket ? impl.given_description : address->ToString();

  auto tls = PlanTls(options, *address);
  if (!tls.ok()) return tls.status();
  std::shared_ptr<const Logger> logger = Logger::Create(options.log, options.log_level);
  logger->Log(LogLevel::kInfo, absl::StrCat("connecting to ", impl.address_text, " (",
                                            wanted_connections, " connection(s))"));
  std::vector<Reconnected> sockets;
  auto first = OpenAndNegotiate(options, *address, nbd::HandshakeOptions::Goal::kTransmission,
                                *tls, /*abort_fd=*/-1,
                                over_given_socket ? &impl.given_socket : nullptr);
  if (!first.ok()) {
    if (!over_given_socket) return first.status();
    return absl::Status(first.status().code(),
                        absl::StrCat(impl.given_description, ": ", first.status().message()));
  }
  client->info_ = first->info;
  if (first->tls != nullptr) {
    client->notes_.push_back(absl::StrCat(tls->context->description(), ": ",
                                          first->tls->description()));
  } else if (tls->mode != nbd::HandshakeOptions::Tls::kDisable) {
    client->notes_.push_back("TLS allowed but not used: the server did not agree to STARTTLS");
  }
  sockets.push_back({std::move(first->fd), std::move(first->tls), first->info});
  const ExportInfo& info = client->info_;
  for (const std::string& context : options.meta_contexts) {
    if (info.FindMetaContext(context) == nullptr) {
      client->notes_.push_back(absl::StrCat("the server did not agree to meta context '",
                                            context, "'"));
    }
  }

  if (logger->enabled(LogLevel::kInfo)) {
    logger->Log(LogLevel::kInfo, absl::StrCat(
        "negotiated export '", info.name, "': size ", info.size, ", flags 0x",
        absl::Hex(info.transmission_flags), ", ", nbd::ReplyModeName(info.reply_mode), " replies, ",
        info.meta_contexts.size(), " meta context(s), ", info.tls ? "TLS" : "no TLS"));
  }
  int connections = wanted_connections;
  if (connections > 1 && over_given_socket) {
    client->notes_.push_back(absl::StrCat("one connection over ", impl.given_description,
                                          " instead of ", connections,
                                          ": there is no address to open more"));
    connections = 1;
  }
  if (connections > 1 && !info.can_multi_conn()) {
    client->notes_.push_back(absl::StrCat(
        "server does not advertise NBD_FLAG_CAN_MULTI_CONN: using 1 connection instead of ",
        connections));
    connections = 1;
  }
  for (int i = 1; i < connections; ++i) {
    auto more =
        OpenAndNegotiate(options, *address, nbd::HandshakeOptions::Goal::kTransmission, *tls);
    if (!more.ok()) {
      return absl::Status(more.status().code(), absl::StrCat("connection ", i + 1, " of ",
                                                             connections, ": ",
                                                             more.status().message()));
    }
    if (more->info.size != info.size || more->info.transmission_flags != info.transmission_flags ||
        more->info.reply_mode != info.reply_mode || !SameMetaContextNames(more->info, info)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "connection ", i + 1, " negotiated a different export (size ", more->info.size,
          " flags 0x", absl::Hex(more->info.transmission_flags), ", ",
          more->info.meta_contexts.size(), " meta context(s)) than connection 1 (size ",
          info.size, " flags 0x", absl::Hex(info.transmission_flags), ", ",
          info.meta_contexts.size(), " meta context(s))"));
    }
    if ((more->tls != nullptr) != info.tls) {
      return absl::FailedPreconditionError(absl::StrCat(
          "connection ", i + 1, " negotiated ", more->tls != nullptr ? "with" : "without",
          " TLS, unlike connection 1"));
    }
    sockets.push_back({std::move(more->fd), std::move(more->tls), more->info});
  }
  threads = std::min(threads, connections);
  impl.connection_count = connections;

  // Split sizes: payloads up to the server's maximum (32 MiB when it states none); requests
  // without payload up to what a 32-bit length holds, kept a multiple of any block size.
  uint64_t max_payload = info.block_size.advertised ? info.block_size.maximum : nbd::kDefaultMaxPayload;
  if (max_payload == 0 || max_payload == UINT32_MAX) max_payload = nbd::kDefaultMaxPayload;
  if (info.block_size.minimum > 1) max_payload -= max_payload % info.block_size.minimum;
  if (max_payload == 0) max_payload = info.block_size.minimum;

  const int64_t request_timeout_ns =
      RingNanoseconds(options.request_timeout, /*zero_is_none=*/true, 0);
  std::vector<std::vector<PendingConnection>> per_thread(threads);
  for (int i = 0; i < connections; ++i) {
    ConnectionOptions connection_options;
    connection_options.adaptive_limit = options.inflight_limit == 0;
    connection_options.inflight_limit =
        options.inflight_limit == 0 ? kAdaptiveInflightCap : options.inflight_limit;
    connection_options.receive_buffer_bytes = options.receive_buffer_bytes;
    connection_options.direct_receive_bytes = options.direct_receive_bytes;
    connection_options.request_timeout_ns = request_timeout_ns;
    connection_options.max_payload_part = max_payload;
    connection_options.max_effect_part = (uint64_t{1} << 32) - (uint64_t{1} << 16);
    connection_options.index = i;
    connection_options.logger = logger;
    connection_options.description =
        absl::StrCat("connection ", i + 1, " to ", impl.address_text);
    if (options.reconnect) {
      connection_options.reconnect_delay_ns =
          RingNanoseconds(options.reconnect_delay, /*zero_is_none=*/false, INT64_MAX);
      connection_options.reconnect_attempts = std::max(options.reconnect_attempts, 0);
      connection_options.reconnect = [options, address = *address, info, tls = *tls](
                                         absl::Time deadline,
                                         int abort_fd) -> absl::StatusOr<Reconnected> {
        ClientOptions attempt = options;
        attempt.connect_timeout = std::min(options.connect_timeout, deadline - absl::Now());
        auto negotiated = OpenAndNegotiate(
            attempt, address, nbd::HandshakeOptions::Goal::kTransmission, tls, abort_fd);
        if (!negotiated.ok()) return negotiated.status();
        const ExportInfo& again = negotiated->info;
        if (again.size != info.size || again.transmission_flags != info.transmission_flags ||
            again.reply_mode != info.reply_mode || !SameMetaContextNames(again, info)) {
          return absl::FailedPreconditionError(
              "the server offers a different export after reconnecting (size, flags, reply "
              "mode or meta contexts changed)");
        }
        if ((negotiated->tls != nullptr) != info.tls) {
          return absl::FailedPreconditionError(
              "the server's TLS support changed after reconnecting");
        }
        return Reconnected{std::move(negotiated->fd), std::move(negotiated->tls), again};
      };
    }
    per_thread[i % threads].push_back(
        {std::move(sockets[i].fd), std::move(sockets[i].tls), std::move(sockets[i].info),
         std::move(connection_options)});
  }
  RingOptions ring_options;
  if (request_timeout_ns > 0) {
    ring_options.timeout_check_ns = std::max<int64_t>(request_timeout_ns / 8, 1000000);
  }
  ring_options.batch_delay_ns =
      RingNanoseconds(options.completion_batch_delay, /*zero_is_none=*/false, 0);
  ring_options.batch_min_in_flight = options.completion_batch_min_in_flight;
  ring_options.close_timeout_ns =
      RingNanoseconds(options.close_timeout, /*zero_is_none=*/false, INT64_MAX);
  if (caller_driven) {
    ring_options.notify_fd = true;
    auto loop = RingLoop::Create(info, &per_thread[0], ring_options);
    if (!loop.ok()) return loop.status();
    impl.polled = *std::move(loop);
    impl.rings.push_back(impl.polled.get());
    client->notes_.push_back(
        "caller-driven: no threads; Poll() on the thread that connected turns the ring");
  }
  for (int t = 0; !caller_driven && t < threads; ++t) {
    ring_options.index = t;
    ring_options.cpu = options.ring_cpus.empty()
                           ? -1
                           : options.ring_cpus[static_cast<size_t>(t) % options.ring_cpus.size()];
    auto ring = RingThread::Start(info, std::move(per_thread[t]), ring_options);
    if (!ring.ok()) return ring.status();
    impl.rings.push_back(&(*ring)->loop());
    impl.ring_threads.push_back(*std::move(ring));
  }
  // Every ring of a process probes the same kernel: one note says which paths they took.
  client->notes_.push_back(absl::StrCat("io_uring: ", impl.rings.front()->ring_description()));
  for (const std::string& note : client->notes_) logger->Log(LogLevel::kInfo, note);
  impl.logger = logger;
  return client;
}

Client::~Client() { Close().IgnoreError(); }

absl::Status Client::Close() {
  if (impl_ == nullptr) return absl::OkStatus();
  if (impl_->CurrentRing() != nullptr) {
    return absl::FailedPreconditionError("Client::Close called from one of its own callbacks");
  }
  if (impl_->polled != nullptr && !impl_->polled->on_this_thread()) {
    if (impl_->closed.load()) return absl::OkStatus();  // closed by its owner: idempotent
    return absl::FailedPreconditionError(
        "Client::Close of a caller-driven client (threads = 0) must run on the thread that "
        "connected it, which turns its ring");
  }
  if (impl_->closed.exchange(true)) return absl::OkStatus();
  if (impl_->logger != nullptr) impl_->logger->Log(LogLevel::kInfo, "closing");
  // A Submit that read `closed` as false is about to hand its operation to a ring; the rings
  // must take it before they stop (see Submit). Such a call is a few instructions long.
  while (impl_->submits_in_progress.load() != 0) std::this_thread::yield();
  for (RingLoop* ring : impl_->rings) ring->RequestClose();
  for (const std::unique_ptr<RingThread>& ring : impl_->ring_threads) ring->Join();
  if (impl_->polled != nullptr) {
    while (impl_->polled->Turn(-1)) {
    }
  }
  impl_->ReapChild();
  return absl::OkStatus();
}

int Client::connections() const { return impl_->connection_count; }
int Client::threads() const { return static_cast<int>(impl_->ring_threads.size()); }

absl::Status Client::Poll(absl::Duration timeout) {
  RingLoop* loop = impl_->polled.get();
  if (loop == nullptr) {
    return absl::FailedPreconditionError(
        "Client::Poll is for caller-driven clients (ClientOptions::threads = 0); this one has "
        "ring threads");
  }
  if (!loop->on_this_thread()) {
    return absl::FailedPreconditionError(
        "Client::Poll must run on the thread that connected the client (the ring is theirs)");
  }
  if (loop->in_turn_on_this_thread()) {
    return absl::FailedPreconditionError("Client::Poll called from one of its own callbacks");
  }
  if (impl_->closed.load()) return absl::FailedPreconditionError("the client is closed");
  int64_t timeout_ns = -1;
  if (timeout != absl::InfiniteDuration()) {
    timeout_ns = std::max<int64_t>(absl::ToInt64Nanoseconds(timeout), 0);
  }
  loop->Turn(timeout_ns);
  return absl::OkStatus();
}

int Client::fd() {
  if (impl_->polled == nullptr || !impl_->polled->on_this_thread()) return -1;
  return impl_->polled->EnableNotifyFd();
}

ClientStats Client::stats() const {
  ClientStats stats;
  for (RingLoop* ring : impl_->rings) ring->AddStats(&stats);
  return stats;
}

std::vector<ClientStats> Client::connection_stats() const {
  std::vector<std::pair<int, ClientStats>> indexed;
  for (RingLoop* ring : impl_->rings) ring->AppendConnectionStats(&indexed);
  std::sort(indexed.begin(), indexed.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<ClientStats> stats;
  for (auto& [index, one] : indexed) stats.push_back(one);
  return stats;
}

absl::Status Client::Validate(const Operation& operation) const {
  const char* name = nbd::CommandName(operation.command);
  auto refuse_flag = [&](uint16_t flag, const char* flag_name,
                         const char* why) -> absl::Status {
    if ((operation.flags & flag) == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("flag ", flag_name, " refused for ", name,
                                                   ": ", why));
  };
  uint16_t allowed = 0;
  bool needs_range = true;
  bool writes = false;
  switch (operation.command) {
    case Command::kRead:
      allowed = nbd::kCmdFlagDf | nbd::kCmdFlagFua;
      break;
    case Command::kWrite:
      allowed = nbd::kCmdFlagFua;
      writes = true;
      break;
    case Command::kFlush:
      if (!info_.can_flush()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_FLUSH refused: the server does not advertise NBD_FLAG_SEND_FLUSH");
      }
      needs_range = false;
      break;
    case Command::kTrim:
      if (!info_.can_trim()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_TRIM refused: the server does not advertise NBD_FLAG_SEND_TRIM");
      }
      allowed = nbd::kCmdFlagFua;
      writes = true;
      break;
    case Command::kWriteZeroes:
      if (!info_.can_zero()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_WRITE_ZEROES refused: the server does not advertise "
            "NBD_FLAG_SEND_WRITE_ZEROES");
      }
      allowed = nbd::kCmdFlagFua | nbd::kCmdFlagNoHole | nbd::kCmdFlagFastZero;
      writes = true;
      break;
    case Command::kCache:
      if (!info_.can_cache()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_CACHE refused: the server does not advertise NBD_FLAG_SEND_CACHE");
      }
      break;
    case Command::kBlockStatus:
      if (info_.meta_contexts.empty()) {
        return absl::FailedPreconditionError(
            "NBD_CMD_BLOCK_STATUS refused: no meta context was negotiated (set "
            "ClientOptions::meta_contexts, e.g. base:allocation)");
      }
      allowed = nbd::kCmdFlagReqOne;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          name, " (", static_cast<int>(operation.command), ") cannot be submitted"));
  }
  if (writes && info_.read_only()) {
    return absl::FailedPreconditionError(absl::StrCat(name, " refused: the export is read-only"));
  }
  if (uint16_t unknown = operation.flags & ~allowed; unknown != 0) {
    return absl::InvalidArgumentError(absl::StrCat("flags 0x", absl::Hex(unknown),
                                                   " are not valid for ", name));
  }
  absl::Status status = refuse_flag(nbd::kCmdFlagFua, "NBD_CMD_FLAG_FUA",
                                    info_.can_fua() ? "" : "the server does not advertise NBD_FLAG_SEND_FUA");
  if (info_.can_fua()) status = absl::OkStatus();
  if (!status.ok()) return status;
  if (!info_.can_df() || !info_.structured_replies()) {
    status = refuse_flag(nbd::kCmdFlagDf, "NBD_CMD_FLAG_DF",
                         "the server does not advertise NBD_FLAG_SEND_DF with structured replies");
    if (!status.ok()) return status;
  }
  if (!info_.can_fast_zero()) {
    status = refuse_flag(nbd::kCmdFlagFastZero, "NBD_CMD_FLAG_FAST_ZERO",
                         "the server does not advertise NBD_FLAG_SEND_FAST_ZERO");
    if (!status.ok()) return status;
  }
  if (!needs_range) {
    if (operation.offset != 0 || operation.length != 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, " takes no range; got offset ",
                                                     operation.offset, " length ",
                                                     operation.length));
    }
    return absl::OkStatus();
  }
  if (operation.length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, " of length 0 at offset ",
                                                   operation.offset, " is not allowed"));
  }
  if (operation.offset > info_.size || operation.length > info_.size - operation.offset) {
    return absl::OutOfRangeError(absl::StrCat(name, " at offset ", operation.offset, " length ",
                                              operation.length,
                                              " is beyond the end of the export (size ",
                                              info_.size, ")"));
  }
  uint32_t minimum = info_.block_size.minimum;
  if (minimum > 1 && (operation.offset % minimum != 0 || operation.length % minimum != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " at offset ", operation.offset, " length ", operation.length,
        " is not aligned to the server's minimum block size ", minimum));
  }
  if ((operation.command == Command::kRead || operation.command == Command::kWrite) &&
      operation.buffer == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, " needs a buffer"));
  }
  if (operation.on_complete == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, " needs an on_complete callback"));
  }
  return absl::OkStatus();
}

void Client::Cancel(Operation* operation, uint64_t submission_id) {
  if (submission_id == 0 || impl_->closed.load(std::memory_order_acquire)) return;
  // Rings are few (default one): asking each is simpler than tracking where it went. Each
  // ring compares the id with the submission it holds, so a stale id matches nothing.
  for (RingLoop* ring : impl_->rings) ring->Cancel(operation, submission_id);
}

uint64_t Client::Submit(Operation* operation) {
  const uint64_t submission_id =
      impl_->next_submission_id.fetch_add(1, std::memory_order_relaxed);
  std::atomic_ref<uint64_t>(StateOf(operation).submission).store(submission_id, std::memory_order_release);
  StateOf(operation).next = nullptr;
  StateOf(operation).cancelled = false;
  StateOf(operation).staged_bytes = 0;
  StateOf(operation).parts_outstanding = 0;
  StateOf(operation).fully_staged = false;
  StateOf(operation).waited_for_slot = false;
  StateOf(operation).submitted_ns = MonotonicNanoseconds();
  StateOf(operation).first_error = Validate(*operation);
  if (operation->on_complete == nullptr) return submission_id;  // nothing to tell
  if (RingLoop* ring = impl_->CurrentRing(); ring != nullptr) {
    // From a callback: this ring is running, so it takes the operation (or, once closing,
    // fails it on its next turn). The hot path of callback-driven I/O: no atomics here.
    ring->Submit(operation);
    return submission_id;
  }
  // Close() sets `closed` and then waits until no Submit is between this check and the hand
  // over below, so an operation either sees `closed` here or reaches a ring that will still
  // take it (both sequentially consistent: the two sides of a Dekker handshake).
  impl_->submits_in_progress.fetch_add(1);
  if (impl_->closed.load()) {
    impl_->submits_in_progress.fetch_sub(1);
    // No ring takes new work any more: the only place left to complete is here.
    operation->on_complete(operation, absl::UnavailableError("the client is closed"));
    return submission_id;
  }
  uint32_t index = impl_->next_ring.fetch_add(1, std::memory_order_relaxed) % impl_->rings.size();
  impl_->rings[index]->Submit(operation);
  impl_->submits_in_progress.fetch_sub(1);
  return submission_id;
}

namespace {

void SubmitCallback(Client* client, Command command, uint16_t flags, uint64_t offset,
                    uint64_t length, void* buffer, Client::Callback done,
                    Client::ExtentsCallback extents = nullptr) {
  auto* operation = new CallbackOperation();
  operation->command = command;
  operation->flags = flags;
  operation->offset = offset;
  operation->length = length;
  operation->buffer = buffer;
  operation->done = std::move(done);
  operation->extents = std::move(extents);
  operation->on_complete = &OnCallbackOperationComplete;
  if (operation->extents) operation->on_extents = &OnCallbackOperationExtents;
  client->Submit(operation);
}

}  // namespace

void Client::Pread(void* buffer, uint64_t length, uint64_t offset, Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kRead, flags, offset, length, buffer, std::move(done));
}
void Client::Pwrite(const void* buffer, uint64_t length, uint64_t offset, Callback done,
                    uint16_t flags) {
  SubmitCallback(this, Command::kWrite, flags, offset, length, const_cast<void*>(buffer),
                 std::move(done));
}
void Client::Flush(Callback done) {
  SubmitCallback(this, Command::kFlush, 0, 0, 0, nullptr, std::move(done));
}
void Client::Trim(uint64_t length, uint64_t offset, Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kTrim, flags, offset, length, nullptr, std::move(done));
}
void Client::WriteZeroes(uint64_t length, uint64_t offset, Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kWriteZeroes, flags, offset, length, nullptr, std::move(done));
}
void Client::Cache(uint64_t length, uint64_t offset, Callback done) {
  SubmitCallback(this, Command::kCache, 0, offset, length, nullptr, std::move(done));
}
void Client::BlockStatus(uint64_t length, uint64_t offset, ExtentsCallback extents,
                         Callback done, uint16_t flags) {
  SubmitCallback(this, Command::kBlockStatus, flags, offset, length, nullptr, std::move(done),
                 std::move(extents));
}

namespace {

template <typename SyncCaller>
absl::Status RunSync(Client* client, const SyncCaller& caller, Command command, uint16_t flags,
                     uint64_t offset, uint64_t length, void* buffer,
                     std::vector<std::pair<uint32_t, std::vector<Extent>>>* extents = nullptr) {
  if (caller.in_callback) {
    return absl::FailedPreconditionError(absl::StrCat(
        "synchronous ", nbd::CommandName(command),
        " called from a client callback would wait for itself; use the asynchronous call"));
  }
  SyncOperation operation;
  operation.command = command;
  operation.flags = flags;
  operation.offset = offset;
  operation.length = length;
  operation.buffer = buffer;
  operation.extents = extents;
  operation.on_complete = &OnSyncComplete;
  if (extents != nullptr) operation.on_extents = &OnSyncExtents;
  client->Submit(&operation);
  if (caller.drive != nullptr) {
    // Caller-driven: nobody else turns this loop. A finished loop has completed everything.
    while (!operation.done.load(std::memory_order_acquire) && caller.drive->Turn(-1)) {
    }
  }
  while (!operation.done.load(std::memory_order_acquire)) operation.done.wait(false);
  return operation.status;
}

}  // namespace

absl::Status Client::PreadSync(void* buffer, uint64_t length, uint64_t offset, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kRead, flags, offset, length, buffer);
}
absl::Status Client::PwriteSync(const void* buffer, uint64_t length, uint64_t offset,
                                uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kWrite, flags, offset, length,
                 const_cast<void*>(buffer));
}
absl::Status Client::FlushSync() {
  return RunSync(this, impl_->sync_caller(), Command::kFlush, 0, 0, 0, nullptr);
}
absl::Status Client::TrimSync(uint64_t length, uint64_t offset, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kTrim, flags, offset, length, nullptr);
}
absl::Status Client::WriteZeroesSync(uint64_t length, uint64_t offset, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kWriteZeroes, flags, offset, length,
                 nullptr);
}
absl::Status Client::CacheSync(uint64_t length, uint64_t offset) {
  return RunSync(this, impl_->sync_caller(), Command::kCache, 0, offset, length, nullptr);
}
absl::Status Client::BlockStatusSync(
    uint64_t length, uint64_t offset,
    std::vector<std::pair<uint32_t, std::vector<Extent>>>* extents, uint16_t flags) {
  return RunSync(this, impl_->sync_caller(), Command::kBlockStatus, flags, offset, length,
                 nullptr, extents);
}

absl::StatusOr<ExportQuery> QueryExport(const ClientOptions& options) {
  auto address = ResolveAddress(options);
  if (!address.ok()) return address.status();
  auto tls = PlanTls(options, *address);
  if (!tls.ok()) return tls.status();
  // NBD_OPT_GO rather than NBD_OPT_INFO: some servers (nbd-server 3.24) answer INFO with
  // size 0, and oldstyle servers have no options at all. NBD_CMD_DISC then ends politely.
  auto negotiated =
      OpenAndNegotiate(options, *address, nbd::HandshakeOptions::Goal::kTransmission, *tls);
  if (!negotiated.ok()) return negotiated.status();
  uint8_t disconnect[nbd::kExtendedRequestSize];
  nbd::RequestHeader header;
  header.command = Command::kDisc;
  size_t size = nbd::EncodeRequest(header, negotiated->info.extended_headers(), disconnect);
  absl::Span<const uint8_t> farewell(disconnect, size);
  std::vector<uint8_t> sealed;
  if (negotiated->tls != nullptr && negotiated->tls->Seal(farewell).ok()) {
    negotiated->tls->Close();
    negotiated->tls->TakeOutput(&sealed);
    farewell = sealed;
  }
  [[maybe_unused]] ssize_t sent =
      send(negotiated->fd.get(), farewell.data(), farewell.size(), MSG_NOSIGNAL);
  ExportQuery query;
  query.info = negotiated->info;
  if (!options.meta_contexts.empty() && options.structured_replies) {
    auto contexts = OpenAndNegotiate(options, *address,
                                     nbd::HandshakeOptions::Goal::kListMetaContexts, *tls);
    if (!contexts.ok()) return contexts.status();
    query.available_meta_contexts = contexts->meta_contexts;
  }
  return query;
}

absl::StatusOr<std::vector<nbd::ExportListing>> ListExports(const ClientOptions& options) {
  auto address = ResolveAddress(options);
  if (!address.ok()) return address.status();
  auto tls = PlanTls(options, *address);
  if (!tls.ok()) return tls.status();
  auto negotiated =
      OpenAndNegotiate(options, *address, nbd::HandshakeOptions::Goal::kList, *tls);
  if (!negotiated.ok()) return negotiated.status();
  return negotiated->exports;
}

}  // namespace nbdring
