#include "runtime/tls_session.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace nbdring {
namespace {

// Payloads at least this long are sealed straight from the caller's buffer, record by record;
// shorter ones (request headers, small writes) are corked together into full records.
constexpr size_t kCorkLimitBytes = 16 * 1024;

std::string AlertSuffix(gnutls_session_t session, int code) {
  if (code != GNUTLS_E_FATAL_ALERT_RECEIVED && code != GNUTLS_E_WARNING_ALERT_RECEIVED) return "";
  const char* name = gnutls_alert_get_name(gnutls_alert_get(session));
  return absl::StrCat(" (alert: ", name != nullptr ? name : "unknown", ")");
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsSession>> TlsSession::Create(
    std::shared_ptr<const TlsContext> context) {
  std::unique_ptr<TlsSession> session(new TlsSession(std::move(context)));
  int code = gnutls_init(&session->session_, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
  if (code < 0) {
    session->session_ = nullptr;
    return absl::InternalError(absl::StrCat("starting a TLS session: ", gnutls_strerror(code)));
  }
  absl::Status configured = session->context_->Configure(session->session_);
  if (!configured.ok()) return configured;
  gnutls_transport_set_ptr(session->session_, session.get());
  gnutls_transport_set_push_function(session->session_, &TlsSession::Push);
  gnutls_transport_set_pull_function(session->session_, &TlsSession::Pull);
  // The caller's connect deadline bounds the handshake; GnuTLS's own timer would need a
  // pull_timeout function that can wait, which memory buffers cannot.
  gnutls_handshake_set_timeout(session->session_, 0);
  return session;
}

TlsSession::TlsSession(std::shared_ptr<const TlsContext> context) : context_(std::move(context)) {}

TlsSession::~TlsSession() {
  if (session_ != nullptr) gnutls_deinit(session_);
}

ssize_t TlsSession::Push(gnutls_transport_ptr_t self, const void* data, size_t size) {
  auto* session = static_cast<TlsSession*>(self);
  const auto* bytes = static_cast<const uint8_t*>(data);
  session->output_.insert(session->output_.end(), bytes, bytes + size);
  return static_cast<ssize_t>(size);
}

ssize_t TlsSession::Pull(gnutls_transport_ptr_t self, void* data, size_t size) {
  auto* session = static_cast<TlsSession*>(self);
  if (session->carried_offset_ < session->carried_input_.size()) {
    size_t taken = std::min(size, session->carried_input_.size() - session->carried_offset_);
    std::memcpy(data, session->carried_input_.data() + session->carried_offset_, taken);
    session->carried_offset_ += taken;
    if (session->carried_offset_ == session->carried_input_.size()) {
      session->carried_input_.clear();
      session->carried_offset_ = 0;
    }
    return static_cast<ssize_t>(taken);
  }
  absl::Span<const uint8_t>* input = session->input_;
  if (input == nullptr || input->empty()) {
    gnutls_transport_set_errno(session->session_, EAGAIN);
    return -1;
  }
  size_t taken = std::min(size, input->size());
  std::memcpy(data, input->data(), taken);
  input->remove_prefix(taken);
  return static_cast<ssize_t>(taken);
}

absl::Status TlsSession::HandshakeError(int code) const {
  if (code == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
    unsigned status = gnutls_session_get_verify_cert_status(session_);
    gnutls_datum_t reason{};
    std::string text = "the server's certificate did not verify";
    if (gnutls_certificate_verification_status_print(
            status, gnutls_certificate_type_get(session_), &reason, 0) == 0) {
      text = absl::StrCat(text, ": ", reinterpret_cast<const char*>(reason.data));
      gnutls_free(reason.data);
    }
    return absl::UnauthenticatedError(absl::StrCat("TLS handshake failed: ", text));
  }
  return absl::UnauthenticatedError(absl::StrCat("TLS handshake failed: ", gnutls_strerror(code),
                                                 AlertSuffix(session_, code)));
}

absl::StatusOr<bool> TlsSession::Handshake(absl::Span<const uint8_t>* input) {
  input_ = input;
  int code;
  do {
    code = gnutls_handshake(session_);
  } while (code < 0 && code != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(code));
  input_ = nullptr;
  if (code == 0) return true;
  if (code == GNUTLS_E_AGAIN) return false;
  return HandshakeError(code);
}

absl::StatusOr<size_t> TlsSession::Open(void* destination, size_t capacity,
                                        absl::Span<const uint8_t>* input) {
  input_ = input;
  ssize_t result;
  while (true) {
    result = gnutls_record_recv(session_, destination, capacity);
    // A TLS 1.2 server asking to renegotiate is ignored (allowed for clients), and so are
    // warning alerts; anything fatal ends the session.
    if (result >= 0 || result == GNUTLS_E_AGAIN || gnutls_error_is_fatal(static_cast<int>(result))) {
      break;
    }
  }
  input_ = nullptr;
  if (result > 0) return static_cast<size_t>(result);
  if (result == GNUTLS_E_AGAIN) return size_t{0};
  if (result == 0) {
    return absl::UnavailableError("the server ended the TLS session (close_notify)");
  }
  const int code = static_cast<int>(result);
  return absl::UnavailableError(absl::StrCat("TLS session broken: ", gnutls_strerror(code),
                                             AlertSuffix(session_, code)));
}

absl::Status TlsSession::Seal(absl::Span<const iovec> data) {
  bool corked = false;
  for (const iovec& piece : data) {
    const auto* bytes = static_cast<const uint8_t*>(piece.iov_base);
    size_t left = piece.iov_len;
    const bool cork = left < kCorkLimitBytes;
    if (cork != corked) {
      if (cork) {
        gnutls_record_cork(session_);
      } else {
        ssize_t flushed = gnutls_record_uncork(session_, GNUTLS_RECORD_WAIT);
        if (flushed < 0) {
          return absl::UnavailableError(absl::StrCat("TLS sealing failed: ",
                                                     gnutls_strerror(static_cast<int>(flushed))));
        }
      }
      corked = cork;
    }
    while (left > 0) {
      ssize_t sent = gnutls_record_send(session_, bytes, left);
      if (sent < 0) {
        if (corked) gnutls_record_uncork(session_, 0);
        return absl::UnavailableError(
            absl::StrCat("TLS sealing failed: ", gnutls_strerror(static_cast<int>(sent))));
      }
      bytes += sent;
      left -= static_cast<size_t>(sent);
    }
  }
  if (corked) {
    ssize_t flushed = gnutls_record_uncork(session_, GNUTLS_RECORD_WAIT);
    if (flushed < 0) {
      return absl::UnavailableError(
          absl::StrCat("TLS sealing failed: ", gnutls_strerror(static_cast<int>(flushed))));
    }
  }
  return absl::OkStatus();
}

absl::Status TlsSession::Seal(absl::Span<const uint8_t> data) {
  iovec piece{const_cast<uint8_t*>(data.data()), data.size()};
  return Seal(absl::MakeConstSpan(&piece, 1));
}

void TlsSession::Close() { gnutls_bye(session_, GNUTLS_SHUT_WR); }

void TlsSession::TakeOutput(std::vector<uint8_t>* sealed) {
  sealed->clear();
  std::swap(*sealed, output_);
}

void TlsSession::CarryInput(absl::Span<const uint8_t> input) {
  carried_input_.insert(carried_input_.end(), input.begin(), input.end());
}

bool TlsSession::has_pending_input() const {
  return carried_offset_ < carried_input_.size() || gnutls_record_check_pending(session_) > 0;
}

std::string TlsSession::description() const {
  char* text = gnutls_session_get_desc(session_);
  if (text == nullptr) return "TLS";
  std::string description(text);
  gnutls_free(text);
  return description;
}

}  // namespace nbdring
