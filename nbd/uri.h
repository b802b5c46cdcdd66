// nbd/uri.h — NBD URIs (NetworkBlockDevice/nbd doc/uri.md, on top of RFC 3986).
//
//   nbd://[user@][host][:port][/export]        TCP, default port 10809; host defaults to
//                                              localhost; IPv6 as [::1] or [fe80::1%25eth0]
//   nbds://...                                 the same with TLS required
//   nbd+unix://[user@]/[export]?socket=PATH    Unix domain socket (nbds+unix: TLS required);
//                                              no host or port; PATH may start with %00
//                                              (Linux abstract namespace)
//   nbd+vsock://[CID][:port][/export]          AF_VSOCK (nbds+vsock: TLS required); libnbd's
//                                              extension, not in doc/uri.md; CID defaults to 2
//                                              (the hypervisor)
//
// Schemes are case-insensitive; "nbd+tcp" and the like are not NBD schemes. The export name is
// the path without its leading '/', percent-decoded ("nbd://h//disk" names "/disk").
// Query parameters are separated by '&' only; '+' is not a space. Understood keys: socket
// (required for +unix, rejected otherwise), and tls-type (anon|x509|psk), tls-hostname,
// tls-verify-peer (0|1), tls-certificates, tls-psk-file, tls-username. The tls-* keys are
// accepted with every scheme because nbd:// and nbd+unix:// may negotiate TLS
// opportunistically. nbdring's own key inflight_limit=N|auto (N from 1 to 65536; 0 means auto
// too, as in ClientOptions) sets the requests each connection keeps in flight; when present
// it replaces ClientOptions::inflight_limit, so a URI can carry its server's tuning into any
// tool. Every other key is an error, as doc/uri.md asks ("SHOULD be diagnosed"),
// and so is a repeated key. The userinfo of the authority is the TLS user name and is stored
// as tls_options["tls-username"]; a password in it is an error.
//
// Anything that is not a valid URI (characters that must be percent-encoded, bad escapes,
// NUL anywhere but the start of socket=, a fragment, a missing "//") is an InvalidArgument
// error naming the part of the URI that was wrong and quoting it.
#ifndef NBDRING_NBD_URI_H_
#define NBDRING_NBD_URI_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace nbd {

struct NbdUri {
  enum class Transport { kTcp, kUnix, kVsock };
  Transport transport = Transport::kTcp;
  bool tls = false;             // nbds, nbds+unix, nbds+vsock
  std::string host;             // kTcp: name or IP literal (IPv6 without brackets, zone after '%')
  uint16_t port = 10809;        // kTcp
  uint32_t vsock_cid = 0;       // kVsock
  uint32_t vsock_port = 10809;  // kVsock
  std::string socket_path;      // kUnix
  std::string export_name;      // percent-decoded
  // tls-* query keys, and the authority's userinfo as "tls-username"; values decoded.
  std::map<std::string, std::string> tls_options;
  // inflight_limit=: unset when absent; 0 for auto.
  std::optional<uint32_t> inflight_limit;

  // A canonical URI string for messages and logs: lower-case scheme, default ports omitted,
  // tls-username as userinfo, socket= first, then inflight_limit=, then tls-* keys sorted. ParseNbdUri of the result
  // gives back an equal NbdUri.
  std::string ToString() const;
};

absl::StatusOr<NbdUri> ParseNbdUri(absl::string_view uri);

}  // namespace nbd

#endif  // NBDRING_NBD_URI_H_
