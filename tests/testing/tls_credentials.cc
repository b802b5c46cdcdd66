#include "tests/testing/tls_credentials.h"

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace nbd::testing {
namespace {

// Run by /bin/sh in the credentials directory. Templates are certtool's; dates in the past
// make the expired certificate.
constexpr char kScript[] = R"(set -e
key() { certtool --generate-privkey --key-type=ecdsa --outfile "$1" 2>/dev/null; }
mkdir -p server client other-ca expired other-host psk
key ca-key.pem
printf 'cn = nbdring test CA\nca\ncert_signing_key\nexpiration_days = 30\n' > ca.info
certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info \
  --outfile ca-cert.pem 2>/dev/null
sign() {  # sign TEMPLATE KEY OUT
  certtool --generate-certificate --load-ca-certificate ca-cert.pem \
    --load-ca-privkey ca-key.pem --load-privkey "$2" --template "$1" --outfile "$3" 2>/dev/null
}
key server/server-key.pem
printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 30\n' > server.info
sign server.info server/server-key.pem server/server-cert.pem
cp ca-cert.pem server/
key client/client-key.pem
printf 'cn = nbdring test client\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 30\n' > client.info
sign client.info client/client-key.pem client/client-cert.pem
cp ca-cert.pem client/
cp server/server-key.pem expired/
printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nsigning_key\nencryption_key\nactivation_date = "2019-01-01 00:00:00 UTC"\nexpiration_date = "2020-01-01 00:00:00 UTC"\n' > expired.info
sign expired.info expired/server-key.pem expired/server-cert.pem
cp ca-cert.pem expired/
cp server/server-key.pem other-host/
printf 'cn = other.example\ndns_name = other.example\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 30\n' > other-host.info
sign other-host.info other-host/server-key.pem other-host/server-cert.pem
cp ca-cert.pem other-host/
key other-ca-key.pem
printf 'cn = unrelated CA\nca\ncert_signing_key\nexpiration_days = 30\n' > other-ca.info
certtool --generate-self-signed --load-privkey other-ca-key.pem --template other-ca.info \
  --outfile other-ca/ca-cert.pem 2>/dev/null
cp client/client-cert.pem client/client-key.pem other-ca/
psktool -u alice -p psk/keys.psk >/dev/null
psktool -u alice -p wrong.psk >/dev/null
)";

}  // namespace

absl::StatusOr<std::unique_ptr<TlsCredentials>> TlsCredentials::Create() {
  auto dir = TempDir::Create();
  if (!dir.ok()) return dir.status();
  const std::string script_path = (*dir)->File("make-credentials.sh");
  std::ofstream(script_path) << kScript;
  const std::string command =
      absl::StrCat("cd '", (*dir)->path(), "' && /bin/sh make-credentials.sh > make.log 2>&1");
  int status = std::system(command.c_str());
  if (status != 0) {
    std::ifstream log((*dir)->File("make.log"));
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    return absl::FailedPreconditionError(absl::StrCat(
        "making TLS credentials with certtool/psktool (package gnutls-bin) failed, exit ",
        WIFEXITED(status) ? WEXITSTATUS(status) : -1, ": ", text));
  }
  return std::unique_ptr<TlsCredentials>(new TlsCredentials(*std::move(dir)));
}

}  // namespace nbd::testing
