// nbd/uri.h — NBD URIs (NetworkBlockDevice/nbd doc/uri.md).
//
//   nbd://[host[:port]][/export]          TCP, default port 10809 (host may be an [IPv6] literal)
//   nbds://...                            the same with TLS required
//   nbd+unix:///[export]?socket=PATH      Unix domain socket (nbds+unix: with TLS)
//   nbd+vsock://CID[:port][/export]       AF_VSOCK
//   query keys: socket=, tls-certificates=, tls-verify-peer=, tls-psk-file=, tls-hostname=,
//               tls-username=
// The export name is the path without its leading '/', percent-decoded. Anything else is an
// error naming the part of the URI that was wrong.
#ifndef NBDRING_NBD_URI_H_
#define NBDRING_NBD_URI_H_

#include <cstdint>
#include <map>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace nbd {

struct NbdUri {
  enum class Transport { kTcp, kUnix, kVsock };
  Transport transport = Transport::kTcp;
  bool tls = false;             // nbds / nbds+unix
  std::string host;             // kTcp: name or IP literal (IPv6 without brackets)
  uint16_t port = 10809;        // kTcp
  uint32_t vsock_cid = 0;       // kVsock
  uint32_t vsock_port = 10809;  // kVsock
  std::string socket_path;      // kUnix
  std::string export_name;      // percent-decoded
  std::map<std::string, std::string> tls_options;  // tls-* query keys, decoded

  // A canonical URI string for messages and logs.
  std::string ToString() const;
};

absl::StatusOr<NbdUri> ParseNbdUri(absl::string_view uri);

}  // namespace nbd

#endif  // NBDRING_NBD_URI_H_
