#include "runtime/negotiation.h"

#include <poll.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace nbdring {
namespace {

// poll()'s timeout until `deadline`: -1 (no limit) for an infinite deadline, else at most
// 1000 s per call (the caller loops).
int RemainingMilliseconds(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  if (left >= absl::Seconds(1000)) return 1000000;
  return static_cast<int>(absl::ToInt64Milliseconds(left) + 1);
}

// Waits until `fd` is ready for `events`. DeadlineExceeded names `stage`; CancelledError when
// `abort_fd` (if >= 0) became readable first.
absl::Status WaitFor(int fd, short events, absl::Time deadline, absl::string_view stage,
                     int abort_fd) {
  while (true) {
    pollfd poll_fds[2] = {{fd, events, 0}, {abort_fd, POLLIN, 0}};
    int ready = poll(poll_fds, abort_fd >= 0 ? 2 : 1, RemainingMilliseconds(deadline));
    if (ready > 0) {
      if (abort_fd >= 0 && poll_fds[1].revents != 0) {
        return absl::CancelledError(absl::StrCat("aborted while ", stage));
      }
      return absl::OkStatus();
    }
    if (ready == 0) {
      if (absl::Now() < deadline) continue;  // a slice of a long wait ended
      return absl::DeadlineExceededError(absl::StrCat("timed out ", stage));
    }
    if (errno != EINTR) return ErrnoError(absl::StrCat("poll while ", stage), errno);
  }
}

}  // namespace

NegotiationPlan MakeNegotiationPlan(const ClientOptions& options, const nbd::NbdUri& address,
                                    nbd::HandshakeOptions::Goal goal, const TlsPlan& tls) {
  nbd::HandshakeOptions handshake;
  handshake.tls = tls.mode;
  handshake.goal = goal;
  handshake.export_name = address.export_name;
  handshake.structured_replies = options.structured_replies;
  handshake.extended_headers = options.extended_headers;
  handshake.meta_contexts = options.meta_contexts;
  handshake.request_block_size = true;
  return NegotiationPlan{address, std::move(handshake), tls.context};
}

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
  ResumableNegotiation negotiation(MakeNegotiationPlan(options, address, goal, tls));
  using Want = ResumableNegotiation::Want;
  Want want = negotiation.Start(given_socket);
  while (want == Want::kReadable || want == Want::kWritable) {
    absl::Status ready = WaitFor(negotiation.fd(), want == Want::kReadable ? POLLIN : POLLOUT,
                                 deadline, negotiation.stage(), abort_fd);
    if (!ready.ok()) return negotiation.Abandon(ready);
    want = negotiation.Step();
  }
  if (want == Want::kFailed) return negotiation.status();
  return negotiation.Take();
}

bool SameExport(const ExportInfo& a, const ExportInfo& b) {
  if (a.size != b.size || a.transmission_flags != b.transmission_flags ||
      a.reply_mode != b.reply_mode || a.meta_contexts.size() != b.meta_contexts.size()) {
    return false;
  }
  for (const nbd::MetaContext& context : a.meta_contexts) {
    if (b.FindMetaContext(context.name) == nullptr) return false;
  }
  return true;
}

absl::Status CheckSameExport(const ExportInfo& first, const Negotiated& again) {
  if (!SameExport(again.info, first)) {
    return absl::FailedPreconditionError(
        "the server offers a different export after reconnecting (size, flags, reply mode or "
        "meta contexts changed)");
  }
  if ((again.tls != nullptr) != first.tls) {
    return absl::FailedPreconditionError("the server's TLS support changed after reconnecting");
  }
  return absl::OkStatus();
}

}  // namespace nbdring
