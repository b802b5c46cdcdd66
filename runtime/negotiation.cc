#include "runtime/negotiation.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace nbdring {
namespace {

nbd::HandshakeOptions MakeHandshakeOptions(const ClientOptions& options,
                                           const nbd::NbdUri& address,
                                           nbd::HandshakeOptions::Goal goal,
                                           const TlsPlan& tls) {
  nbd::HandshakeOptions handshake;
  handshake.tls = tls.mode;
  handshake.goal = goal;
  handshake.export_name = address.export_name;
  handshake.structured_replies = options.structured_replies;
  handshake.extended_headers = options.extended_headers;
  handshake.meta_contexts = options.meta_contexts;
  handshake.request_block_size = true;
  return handshake;
}

}  // namespace

absl::StatusOr<nbd::NbdUri> ResolveAddress(const ClientOptions& options) {
  if (options.uri.empty()) return options.address;
  return nbd::ParseNbdUri(options.uri);
}

absl::StatusOr<TlsPlan> PlanTls(const ClientOptions& options, const nbd::NbdUri& address) {
  using Tls = nbd::HandshakeOptions::Tls;
  TlsPlan plan;
  switch (options.tls) {
    case ClientOptions::Tls::kDefault:
      plan.mode = address.tls ? Tls::kRequire : Tls::kDisable;
      break;
    case ClientOptions::Tls::kDisable:
      if (address.tls) {
        return absl::InvalidArgumentError(absl::StrCat(
            address.ToString(), " requires TLS (nbds), but the options disable it"));
      }
      plan.mode = Tls::kDisable;
      break;
    case ClientOptions::Tls::kAllow:
      plan.mode = address.tls ? Tls::kRequire : Tls::kAllow;
      break;
    case ClientOptions::Tls::kRequire:
      plan.mode = Tls::kRequire;
      break;
  }
  if (plan.mode == Tls::kDisable) return plan;
  auto from_uri = [&](const std::string& field, const char* key) {
    if (!field.empty()) return field;
    auto found = address.tls_options.find(key);
    return found == address.tls_options.end() ? std::string() : found->second;
  };
  TlsSettings settings;
  settings.certificates_dir = from_uri(options.tls_certificates, "tls-certificates");
  settings.psk_file = from_uri(options.tls_psk_file, "tls-psk-file");
  settings.username = from_uri(options.tls_username, "tls-username");
  settings.hostname = from_uri(options.tls_hostname, "tls-hostname");
  if (settings.hostname.empty() && address.transport == nbd::NbdUri::Transport::kTcp) {
    settings.hostname = address.host.empty() ? "localhost" : address.host;
  }
  auto verify = address.tls_options.find("tls-verify-peer");
  settings.verify_peer =
      options.tls_verify_peer && (verify == address.tls_options.end() || verify->second != "0");
  auto type = address.tls_options.find("tls-type");
  if (type != address.tls_options.end()) {
    if (type->second == "anon") {
      return absl::InvalidArgumentError(
          "tls-type=anon (TLS without authentication) is not supported: use x509 or psk");
    }
    if (type->second == "psk" && settings.psk_file.empty()) {
      return absl::InvalidArgumentError("tls-type=psk needs tls-psk-file");
    }
    if (type->second == "x509" && !settings.psk_file.empty()) {
      return absl::InvalidArgumentError("tls-type=x509 conflicts with tls-psk-file");
    }
  }
  auto context = TlsContext::Create(settings);
  if (!context.ok()) return context.status();
  plan.context = *std::move(context);
  return plan;
}

absl::StatusOr<Negotiated> OpenAndNegotiate(const ClientOptions& options,
                                            const nbd::NbdUri& address,
                                            nbd::HandshakeOptions::Goal goal,
                                            const TlsPlan& tls, int abort_fd,
                                            FileDescriptor* given_socket) {
  absl::Time deadline = absl::Now() + options.connect_timeout;
  absl::StatusOr<FileDescriptor> fd =
      given_socket != nullptr ? absl::StatusOr<FileDescriptor>(std::move(*given_socket))
                              : ConnectTo(address, deadline, abort_fd);
  if (!fd.ok()) return fd.status();
  nbd::Handshake handshake(MakeHandshakeOptions(options, address, goal, tls));
  std::unique_ptr<TlsSession> session;
  absl::Status status = RunHandshake(fd->get(), handshake, deadline, abort_fd, tls.context, &session);
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("handshake with ", address.ToString(),
                                                    " failed: ", status.message()));
  }
  Negotiated negotiated{*std::move(fd), std::move(session), handshake.export_info(),
                        handshake.exports(), handshake.listed_meta_contexts()};
  return negotiated;
}

bool SameMetaContextNames(const ExportInfo& a, const ExportInfo& b) {
  if (a.meta_contexts.size() != b.meta_contexts.size()) return false;
  for (const nbd::MetaContext& context : a.meta_contexts) {
    if (b.FindMetaContext(context.name) == nullptr) return false;
  }
  return true;
}

}  // namespace nbdring
