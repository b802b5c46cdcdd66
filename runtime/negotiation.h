// runtime/negotiation.h — from options to a negotiated socket: the address (URI or
// ClientOptions::address), the TLS plan, and one blocking connect + handshake (the step
// machine of runtime/resumable_negotiation.h driven with poll(), bounded by connect_timeout).
// Client::Connect, the threaded reconnect attempts and QueryExport/ListExports use it.
#ifndef NBDRING_RUNTIME_NEGOTIATION_H_
#define NBDRING_RUNTIME_NEGOTIATION_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nbd/export_info.h"
#include "nbd/handshake.h"
#include "nbd/uri.h"
#include "nbdring/client.h"
#include "runtime/resumable_negotiation.h"
#include "runtime/socket.h"
#include "runtime/tls_context.h"
#include "runtime/tls_session.h"

namespace nbdring {

absl::StatusOr<nbd::NbdUri> ResolveAddress(const ClientOptions& options);

// What TLS a client uses, decided once from its options and URI.
struct TlsPlan {
  nbd::HandshakeOptions::Tls mode = nbd::HandshakeOptions::Tls::kDisable;
  std::shared_ptr<const TlsContext> context;  // null when mode is kDisable
};
absl::StatusOr<TlsPlan> PlanTls(const ClientOptions& options, const nbd::NbdUri& address);

// What one connect + handshake towards `goal` needs, from the client's options.
NegotiationPlan MakeNegotiationPlan(const ClientOptions& options, const nbd::NbdUri& address,
                                    nbd::HandshakeOptions::Goal goal, const TlsPlan& tls);

// Connects to `address` (or takes `given_socket`, when not null) and negotiates towards
// `goal`; gives up with CancelledError as soon as `abort_fd` (if >= 0) is readable.
absl::StatusOr<Negotiated> OpenAndNegotiate(const ClientOptions& options,
                                            const nbd::NbdUri& address,
                                            nbd::HandshakeOptions::Goal goal,
                                            const TlsPlan& tls, int abort_fd = -1,
                                            FileDescriptor* given_socket = nullptr);

// The same export as far as requests care: size, transmission flags, reply mode, and meta
// contexts by name (ids may differ: the spec lets a server number them per connection).
bool SameExport(const ExportInfo& a, const ExportInfo& b);

// A reconnect must find the export the client reported: the same size, flags, reply mode,
// meta contexts (by name) and TLS. FailedPrecondition says what changed.
absl::Status CheckSameExport(const ExportInfo& first, const Negotiated& again);

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_NEGOTIATION_H_
