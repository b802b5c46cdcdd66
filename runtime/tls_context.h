// runtime/tls_context.h — what a client needs for TLS, loaded once: GnuTLS credentials (X.509
// trust and client certificate, or a pre-shared key), the priority string, and the name the
// server's certificate must carry. Every connection's TlsSession (and every reconnect) shares
// one context; it is immutable after Create, so any thread may start sessions from it.
//
// Secure by default: peer verification is on, and the certificate must name `hostname` when
// there is one (the TCP host or tls-hostname). Over a Unix socket or vsock with no
// tls-hostname the chain is still verified, without a name check.
//
// Files, laid out as libnbd, QEMU and nbdkit expect them:
//   certificates_dir/ca-cert.pem                    trusted CAs (required in the directory)
//   certificates_dir/client-cert.pem, client-key.pem  our certificate, when the server asks
//   certificates_dir/ca-crl.pem                     revocations, optional
// With no directory and no PSK file, the system's trust store is used.
//   psk_file: lines "username:hexkey" (psktool's format). The entry used is `username`'s; with
//   no username, the login name's, or the only entry when the file has one.
#ifndef NBDRING_RUNTIME_TLS_CONTEXT_H_
#define NBDRING_RUNTIME_TLS_CONTEXT_H_

#include <gnutls/gnutls.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace nbdring {

struct TlsSettings {
  std::string certificates_dir;
  std::string psk_file;
  std::string username;
  std::string hostname;  // checked against the certificate; empty: chain only
  bool verify_peer = true;
};

class TlsContext {
 public:
  // InvalidArgument for unreadable or malformed files, naming the file and GnuTLS's reason.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(const TlsSettings& settings);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Sets credentials, priorities, server name and verification on a new client session.
  absl::Status Configure(gnutls_session_t session) const;
  // For Client::notes(): "TLS with X.509 (CA ca-cert.pem from DIR, verifying host H)" etc.
  const std::string& description() const { return description_; }
  bool psk() const { return psk_credentials_ != nullptr; }

 private:
  TlsContext() = default;
  absl::Status LoadCertificates(const TlsSettings& settings);
  absl::Status LoadPsk(const TlsSettings& settings);

  gnutls_certificate_credentials_t certificate_credentials_ = nullptr;
  gnutls_psk_client_credentials_t psk_credentials_ = nullptr;
  gnutls_priority_t priority_ = nullptr;
  std::string hostname_;
  bool verify_peer_ = true;
  std::string description_;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_TLS_CONTEXT_H_
