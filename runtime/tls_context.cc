#include "runtime/tls_context.h"

#include <arpa/inet.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace nbdring {
namespace {

bool FileExists(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0;
}

std::string LoginName() {
  std::vector<char> buffer(16384);
  passwd entry;
  passwd* found = nullptr;
  if (getpwuid_r(geteuid(), &entry, buffer.data(), buffer.size(), &found) == 0 && found) {
    return found->pw_name;
  }
  return "";
}

// A host name the certificate is checked against may be an IP literal; SNI carries DNS names
// only (RFC 6066).
bool IsIpLiteral(const std::string& host) {
  unsigned char address[16];
  return inet_pton(AF_INET, host.c_str(), address) == 1 ||
         inet_pton(AF_INET6, host.c_str(), address) == 1;
}

absl::Status GnutlsError(absl::string_view what, int code) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", gnutls_strerror(code)));
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(const TlsSettings& settings) {
  std::shared_ptr<TlsContext> context(new TlsContext());
  context->hostname_ = settings.hostname;
  context->verify_peer_ = settings.verify_peer;
  absl::Status loaded =
      settings.psk_file.empty() ? context->LoadCertificates(settings) : context->LoadPsk(settings);
  if (!loaded.ok()) return loaded;
  return std::shared_ptr<const TlsContext>(std::move(context));
}

TlsContext::~TlsContext() {
  if (certificate_credentials_ != nullptr) gnutls_certificate_free_credentials(certificate_credentials_);
  if (psk_credentials_ != nullptr) gnutls_psk_free_client_credentials(psk_credentials_);
  if (priority_ != nullptr) gnutls_priority_deinit(priority_);
}

absl::Status TlsContext::LoadCertificates(const TlsSettings& settings) {
  int code = gnutls_certificate_allocate_credentials(&certificate_credentials_);
  if (code < 0) return GnutlsError("allocating X.509 credentials", code);
  std::string trust;
  if (!settings.certificates_dir.empty()) {
    const std::string& dir = settings.certificates_dir;
    const std::string ca = absl::StrCat(dir, "/ca-cert.pem");
    if (!FileExists(ca)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tls-certificates: ", ca, " does not exist (the directory must hold ca-cert.pem, and "
          "client-cert.pem with client-key.pem if the server asks for a client certificate)"));
    }
    code = gnutls_certificate_set_x509_trust_file(certificate_credentials_, ca.c_str(),
                                                   GNUTLS_X509_FMT_PEM);
    if (code < 0) return GnutlsError(absl::StrCat("loading CA certificates from ", ca), code);
    if (code == 0) {
      return absl::InvalidArgumentError(absl::StrCat(ca, " holds no CA certificate"));
    }
    trust = absl::StrCat("CA ", ca);
    const std::string crl = absl::StrCat(dir, "/ca-crl.pem");
    if (FileExists(crl)) {
      code = gnutls_certificate_set_x509_crl_file(certificate_credentials_, crl.c_str(),
                                                   GNUTLS_X509_FMT_PEM);
      if (code < 0) return GnutlsError(absl::StrCat("loading revocations from ", crl), code);
    }
    const std::string cert = absl::StrCat(dir, "/client-cert.pem");
    const std::string key = absl::StrCat(dir, "/client-key.pem");
    if (FileExists(cert) != FileExists(key)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tls-certificates: ", FileExists(cert) ? cert : key, " exists but ",
          FileExists(cert) ? key : cert, " does not; a client certificate needs both"));
    }
    if (FileExists(cert)) {
      code = gnutls_certificate_set_x509_key_file(certificate_credentials_, cert.c_str(),
                                                  key.c_str(), GNUTLS_X509_FMT_PEM);
      if (code < 0) {
        return GnutlsError(absl::StrCat("loading the client certificate ", cert, " and key ", key),
                           code);
      }
      absl::StrAppend(&trust, ", client certificate ", cert);
    }
  } else {
    code = gnutls_certificate_set_x509_system_trust(certificate_credentials_);
    if (code < 0) return GnutlsError("loading the system's trusted CAs", code);
    trust = absl::StrCat("the system's ", code, " trusted CAs");
  }
  description_ = absl::StrCat(
      "TLS with X.509 (", trust, "; ",
      !verify_peer_ ? "peer NOT verified: tls-verify-peer is off"
      : hostname_.empty() ? "verifying the certificate chain, no host name to check"
                          : absl::StrCat("verifying the chain and host name '", hostname_, "'"),
      ")");
  return absl::OkStatus();
}

absl::Status TlsContext::LoadPsk(const TlsSettings& settings) {
  std::ifstream file(settings.psk_file);
  if (!file) {
    return absl::InvalidArgumentError(absl::StrCat("tls-psk-file: cannot read ", settings.psk_file,
                                                   ": ", strerror(errno)));
  }
  std::stringstream contents;
  contents << file.rdbuf();
  std::string text = contents.str();
  std::vector<std::pair<std::string, std::string>> entries;  // username, hex key
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    size_t colon = line.rfind(':');
    absl::string_view key = colon == absl::string_view::npos ? "" : line.substr(colon + 1);
    bool hex = !key.empty() && key.size() % 2 == 0 &&
               std::all_of(key.begin(), key.end(), [](char c) { return absl::ascii_isxdigit(c); });
    if (colon == 0 || !hex) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tls-psk-file ", settings.psk_file, " line ", line_number,
          " is not 'username:hexkey' (the format psktool writes)"));
    }
    entries.emplace_back(std::string(line.substr(0, colon)), std::string(key));
  }
  explicit_bzero(text.data(), text.size());
  std::string username = settings.username;
  const std::pair<std::string, std::string>* chosen = nullptr;
  auto find = [&](const std::string& name) -> const std::pair<std::string, std::string>* {
    for (const auto& entry : entries) {
      if (entry.first == name) return &entry;
    }
    return nullptr;
  };
  if (!username.empty()) {
    chosen = find(username);
  } else {
    // libnbd uses the login name; a file with a single entry is unambiguous too.
    chosen = find(LoginName());
    if (chosen == nullptr && entries.size() == 1) chosen = &entries[0];
  }
  if (chosen == nullptr) {
    std::vector<std::string> names;
    for (const auto& entry : entries) names.push_back(entry.first);
    absl::Status status = absl::InvalidArgumentError(absl::StrCat(
        "tls-psk-file ", settings.psk_file, " has no key for ",
        username.empty() ? absl::StrCat("login name '", LoginName(), "' (set tls-username)")
                         : absl::StrCat("user '", username, "'"),
        "; it has: ", names.empty() ? "no entries" : absl::StrJoin(names, ", ")));
    for (auto& entry : entries) explicit_bzero(entry.second.data(), entry.second.size());
    return status;
  }
  int code = gnutls_psk_allocate_client_credentials(&psk_credentials_);
  if (code < 0) return GnutlsError("allocating PSK credentials", code);
  gnutls_datum_t key{reinterpret_cast<unsigned char*>(const_cast<char*>(chosen->second.data())),
                     static_cast<unsigned>(chosen->second.size())};
  code = gnutls_psk_set_client_credentials(psk_credentials_, chosen->first.c_str(), &key,
                                           GNUTLS_PSK_KEY_HEX);
  const std::string user = chosen->first;
  for (auto& entry : entries) explicit_bzero(entry.second.data(), entry.second.size());
  if (code < 0) {
    return GnutlsError(absl::StrCat("tls-psk-file ", settings.psk_file, ": key of '", user, "'"),
                       code);
  }
  // PSK key exchanges are not in the default priorities; nbdkit and QEMU enable the same three.
  const char* error_position = nullptr;
  code = gnutls_priority_init2(&priority_, "+ECDHE-PSK:+DHE-PSK:+PSK", &error_position,
                               GNUTLS_PRIORITY_INIT_DEF_APPEND);
  if (code < 0) return GnutlsError("setting PSK priorities", code);
  description_ = absl::StrCat("TLS with a pre-shared key (user '", user, "' from ",
                              settings.psk_file, ")");
  return absl::OkStatus();
}

absl::Status TlsContext::Configure(gnutls_session_t session) const {
  int code = priority_ != nullptr ? gnutls_priority_set(session, priority_)
                                  : gnutls_set_default_priority(session);
  if (code < 0) return GnutlsError("setting TLS priorities", code);
  if (psk_credentials_ != nullptr) {
    code = gnutls_credentials_set(session, GNUTLS_CRD_PSK, psk_credentials_);
    if (code < 0) return GnutlsError("setting PSK credentials", code);
    return absl::OkStatus();
  }
  code = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, certificate_credentials_);
  if (code < 0) return GnutlsError("setting X.509 credentials", code);
  if (!hostname_.empty() && !IsIpLiteral(hostname_)) {
    code = gnutls_server_name_set(session, GNUTLS_NAME_DNS, hostname_.data(), hostname_.size());
    if (code < 0) return GnutlsError(absl::StrCat("server name '", hostname_, "'"), code);
  }
  if (verify_peer_) {
    // GnuTLS then verifies the chain (and the name, when given) inside the handshake, which
    // fails with GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR before any NBD byte is exchanged.
    gnutls_session_set_verify_cert(session, hostname_.empty() ? nullptr : hostname_.c_str(), 0);
  }
  return absl::OkStatus();
}

}  // namespace nbdring
