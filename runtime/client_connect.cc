// Client::Connect and its siblings (ConnectSocket, ConnectCommand), and the negotiation-only
// helpers QueryExport and ListExports: from options to running rings.
#include <sys/socket.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nbd/request.h"
#include "nbdring/client.h"
#include "runtime/client_impl.h"
#include "runtime/clock.h"
#include "runtime/connection.h"
#include "runtime/logger.h"
#include "runtime/negotiation.h"
#include "runtime/ring_pool.h"
#include "runtime/server_command.h"

namespace nbdring {
namespace {

// One reconnect attempt for a connection of this client: connect and negotiate again, and
// insist on the same export.
Reconnector::Attempt ReconnectAttempt(const ClientOptions& options, const nbd::NbdUri& address,
                                      const ExportInfo& info, const TlsPlan& tls) {
  ClientOptions handshake = options;
  handshake.runtime = nullptr;  // a handshake needs no rings, and must not keep them alive
  return [handshake, address, info, tls](absl::Time deadline,
                                         int abort_fd) -> absl::StatusOr<Reconnected> {
    ClientOptions attempt = handshake;
    attempt.connect_timeout = std::min(handshake.connect_timeout, deadline - absl::Now());
    auto negotiated = OpenAndNegotiate(attempt, address,
                                       nbd::HandshakeOptions::Goal::kTransmission, tls, abort_fd);
    if (!negotiated.ok()) return negotiated.status();
    if (absl::Status same = CheckSameExport(info, *negotiated); !same.ok()) return same;
    const ExportInfo& again = negotiated->info;
    return Reconnected{std::move(negotiated->fd), std::move(negotiated->tls), again};
  };
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  return ConnectWith(options, std::make_unique<Impl>());
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options,
                                                        std::shared_ptr<Runtime> runtime) {
  ClientOptions with_runtime = options;
  with_runtime.runtime = std::move(runtime);
  return ConnectWith(with_runtime, std::make_unique<Impl>());
}

absl::StatusOr<std::unique_ptr<Client>> Client::ConnectSocket(int fd,
                                                              const ClientOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->given_socket = FileDescriptor(fd);  // ours from here, even on failure
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("ConnectSocket: bad fd ", fd));
  // The handshake waits with poll(); the ring takes the socket over afterwards.
  if (absl::Status nonblocking = SetNonBlocking(fd, true); !nonblocking.ok()) return nonblocking;
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
  // The URI's inflight_limit= (checked by the parser) replaces the option.
  const uint32_t inflight_limit = address->inflight_limit.value_or(options.inflight_limit);
  if (inflight_limit > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inflight_limit must be between 1 and 65536, or 0 for automatic, got ", inflight_limit));
  }
  if (options.receive_buffer_bytes < 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "receive_buffer_bytes must be at least 4096, got ", options.receive_buffer_bytes));
  }
  // Only RingPool implements Runtime (its constructor is protected; see ring_pool.h).
  std::shared_ptr<RingPool> shared_pool = std::static_pointer_cast<RingPool>(options.runtime);
  int wanted_connections = std::max(options.connections, 1);
  // A private pool's options (checked before connecting; its size waits for the connections).
  RuntimeOptions private_options;
  private_options.threads = options.threads;
  private_options.ring_cpus = options.ring_cpus;
  private_options.completion_batch_delay = options.completion_batch_delay;
  private_options.completion_batch_min_in_flight = options.completion_batch_min_in_flight;
  if (shared_pool == nullptr) {
    if (absl::Status checked = CheckRuntimeOptions(private_options); !checked.ok()) return checked;
  }
  const bool caller_driven =
      shared_pool != nullptr ? shared_pool->polled() != nullptr : options.threads == 0;
  if (wanted_connections > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("connections must be between 1 and 1024, got ", wanted_connections));
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
    if (!SameExport(more->info, info)) {
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
  impl.connection_count = connections;

  // Split sizes: payloads up to the server's maximum (32 MiB when it states none); requests
  // without payload up to what a 32-bit length holds, kept a multiple of any block size.
  uint64_t max_payload = info.block_size.advertised ? info.block_size.maximum : nbd::kDefaultMaxPayload;
  if (max_payload == 0 || max_payload == UINT32_MAX) max_payload = nbd::kDefaultMaxPayload;
  if (info.block_size.minimum > 1) max_payload -= max_payload % info.block_size.minimum;
  if (max_payload == 0) max_payload = info.block_size.minimum;

  const int64_t request_timeout_ns =
      RingNanoseconds(options.request_timeout, /*zero_is_none=*/true, 0);
  if (shared_pool != nullptr) {
    impl.pool = shared_pool;
  } else {
    private_options.threads = std::min(options.threads, connections);  // 0 stays 0
    const int per_ring = (connections + std::max(private_options.threads, 1) - 1) /
                         std::max(private_options.threads, 1);
    auto pool = RingPool::Create(private_options, /*ring_entries=*/4 * per_ring + 8);
    if (!pool.ok()) return pool.status();
    impl.pool = *std::move(pool);
    impl.private_pool = true;
  }
  // Each connection goes to the loop with the fewest; one group per loop used.
  std::vector<RingLoop*> placement = impl.pool->Place(connections);
  for (int i = 0; i < connections; ++i) {
    RingLoop* loop = placement[static_cast<size_t>(i)];
    auto attachment = std::find_if(impl.attachments.begin(), impl.attachments.end(),
                                   [loop](const Attachment& a) { return a.loop == loop; });
    if (attachment == impl.attachments.end()) {
      impl.attachments.push_back({loop, std::make_unique<ConnectionGroup>()});
      attachment = impl.attachments.end() - 1;
      attachment->group->request_timeout_ns = request_timeout_ns;
      attachment->group->close_timeout_ns =
          RingNanoseconds(options.close_timeout, /*zero_is_none=*/false, INT64_MAX);
    }
    ConnectionGroup& group = *attachment->group;
    ConnectionOptions connection_options;
    connection_options.adaptive_limit = inflight_limit == 0;
    connection_options.inflight_limit =
        inflight_limit == 0 ? kAdaptiveInflightCap : inflight_limit;
    connection_options.receive_buffer_bytes = options.receive_buffer_bytes;
    connection_options.direct_receive_bytes = options.direct_receive_bytes;
    connection_options.request_timeout_ns = request_timeout_ns;
    connection_options.max_payload_part = max_payload;
    connection_options.max_effect_part = (uint64_t{1} << 32) - (uint64_t{1} << 16);
    connection_options.index = i;
    connection_options.logger = logger;
    connection_options.latency = &group.latency;
    connection_options.description =
        absl::StrCat("connection ", i + 1, " to ", impl.address_text);
    if (options.reconnect) {
      connection_options.reconnect_delay_ns =
          RingNanoseconds(options.reconnect_delay, /*zero_is_none=*/false, INT64_MAX);
      connection_options.reconnect_attempts = std::max(options.reconnect_attempts, 0);
      if (caller_driven) {
        // No thread: attempts run as non-blocking steps inside the turns of the ring.
        auto plan = std::make_shared<RingReconnectPlan>();
        plan->negotiation = MakeNegotiationPlan(
            options, *address, nbd::HandshakeOptions::Goal::kTransmission, *tls);
        plan->connect_timeout_ns =
            RingNanoseconds(options.connect_timeout, /*zero_is_none=*/false, INT64_MAX);
        plan->check = [info](const Negotiated& again) { return CheckSameExport(info, again); };
        connection_options.ring_reconnect = std::move(plan);
      } else {
        connection_options.wake_ring = [loop] { loop->Wake(); };
        connection_options.reconnect = ReconnectAttempt(options, *address, info, *tls);
      }
    }
    Reconnected& socket = sockets[static_cast<size_t>(i)];
    // Built here, started by the loop when it adopts the group (a Connection touches its
    // ring only from Start on).
    group.connections.push_back(std::make_unique<Connection>(
        loop->ring(), std::move(socket.fd), std::move(socket.tls), socket.info,
        info.meta_contexts, std::move(connection_options)));
  }
  for (Attachment& attachment : impl.attachments) attachment.loop->Attach(attachment.group.get());
  if (shared_pool != nullptr) {
    client->notes_.push_back(absl::StrCat("shared runtime: ", connections,
                                          " connection(s) on ", impl.attachments.size(), " of its ",
                                          impl.pool->loops().size(), " ring(s)"));
  }
  for (std::string& note : impl.pool->notes()) client->notes_.push_back(std::move(note));
  for (const std::string& note : client->notes_) logger->Log(LogLevel::kInfo, note);
  impl.logger = logger;
  return client;
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
