// runtime/negotiation.h — from options to a negotiated socket: the address (URI or
// ClientOptions::address), the TLS plan, and one connect + handshake (blocking, bounded by
// connect_timeout). Client::Connect, the reconnect attempts and QueryExport/ListExports use it.
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

struct Negotiated {
  FileDescriptor fd;
  std::unique_ptr<TlsSession> tls;  // null for plain text
  nbd::ExportInfo info;
  std::vector<nbd::ExportListing> exports;
  std::vector<std::string> meta_contexts;
};
// Connects to `address` (or takes `given_socket`, when not null) and negotiates towards
// `goal`; gives up with CancelledError as soon as `abort_fd` (if >= 0) is readable.
absl::StatusOr<Negotiated> OpenAndNegotiate(const ClientOptions& options,
                                            const nbd::NbdUri& address,
                                            nbd::HandshakeOptions::Goal goal,
                                            const TlsPlan& tls, int abort_fd = -1,
                                            FileDescriptor* given_socket = nullptr);

// The same meta contexts by name (ids may differ: the spec lets a server number them per
// connection).
bool SameMetaContextNames(const ExportInfo& a, const ExportInfo& b);

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_NEGOTIATION_H_
