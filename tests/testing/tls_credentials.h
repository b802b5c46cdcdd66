// tests/testing/tls_credentials.h — TLS credentials made for one test run with certtool and
// psktool (Debian's gnutls-bin), laid out the way nbdkit, qemu-nbd and libnbd read them.
//
// One CA signs everything good; each directory below holds what one server or client needs:
//   server_dir()        ca-cert.pem, server-cert.pem + server-key.pem for "localhost" and
//                       127.0.0.1 (nbdkit --tls-certificates, qemu tls-creds-x509 dir=)
//   client_dir()        ca-cert.pem, client-cert.pem + client-key.pem (tls-certificates=)
//   other_ca_dir()      a client directory whose ca-cert.pem is an unrelated CA
//   expired_server_dir()  a server directory whose certificate expired in 2020
//   other_host_server_dir()  a server directory whose certificate names other.example only
//   psk_file()          "alice:<key>" (nbdkit --tls-psk=); psk_dir() holds it as keys.psk
//                       (qemu tls-creds-psk dir=)
//   wrong_psk_file()    "alice:<another key>"
// Keys are ECDSA, so making all of it takes well under a second.
#ifndef NBDRING_TESTS_TESTING_TLS_CREDENTIALS_H_
#define NBDRING_TESTS_TESTING_TLS_CREDENTIALS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tests/testing/server_process.h"

namespace nbd::testing {

class TlsCredentials {
 public:
  static absl::StatusOr<std::unique_ptr<TlsCredentials>> Create();

  std::string server_dir() const { return dir_->File("server"); }
  std::string client_dir() const { return dir_->File("client"); }
  std::string other_ca_dir() const { return dir_->File("other-ca"); }
  std::string expired_server_dir() const { return dir_->File("expired"); }
  std::string other_host_server_dir() const { return dir_->File("other-host"); }
  std::string psk_dir() const { return dir_->File("psk"); }
  std::string psk_file() const { return dir_->File("psk/keys.psk"); }
  std::string wrong_psk_file() const { return dir_->File("wrong.psk"); }

 private:
  explicit TlsCredentials(std::unique_ptr<TempDir> dir) : dir_(std::move(dir)) {}
  std::unique_ptr<TempDir> dir_;
};

}  // namespace nbd::testing

#endif  // NBDRING_TESTS_TESTING_TLS_CREDENTIALS_H_
