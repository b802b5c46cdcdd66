// Client::Connect and its siblings (ConnectSocket, ConnectCommand), and the negotiation-only
// helpers QueryExport and ListExports: from options to running rings.
#include <sched.h>
#include <sys/socket.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nbd/request.h"
#include "nbdring/client.h"
#include "runtime/client_impl.h"
#include "runtime/connection.h"
#include "runtime/logger.h"
#include "runtime/negotiation.h"
#include "runtime/ring_thread.h"
#include "runtime/server_command.h"

namespace nbdring {
namespace {

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
