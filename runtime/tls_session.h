// runtime/tls_session.h — one TLS session (GnuTLS, client side) over memory buffers.
//
// The session never touches the socket. The connection's io_uring recv hands it ciphertext
// and its io_uring sendmsg carries the records it sealed, so TLS adds no second I/O path and
// keeps the ring's batching: every request staged in one loop turn is sealed into as few
// records as fit (corked), and one recv's worth of records is opened in one go.
//
//   ciphertext in:  Handshake(&input) / Open(..., &input) read from `input` and advance it;
//                   whatever they leave must be offered again on the next call (in the
//                   transmission phase they always take all of it: GnuTLS keeps partial
//                   records itself).
//   ciphertext out: Handshake, Seal and Close append records to output(); the caller sends
//                   them and calls TakeOutput to reuse the buffer.
//
// Errors are absl::Status: kUnauthenticated when the handshake fails (certificate not
// trusted or naming another host, wrong PSK, no common cipher: the reason is GnuTLS's), and
// kUnavailable for a broken session in the transmission phase (bad record, alert, the peer's
// close_notify), which a reconnect may heal.
#ifndef NBDRING_RUNTIME_TLS_SESSION_H_
#define NBDRING_RUNTIME_TLS_SESSION_H_

#include <gnutls/gnutls.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/tls_context.h"

namespace nbdring {

class TlsSession {
 public:
  static absl::StatusOr<std::unique_ptr<TlsSession>> Create(
      std::shared_ptr<const TlsContext> context);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Advances the handshake: true once it is complete, false while it needs more input (send
  // output() first: the server is waiting for it).
  absl::StatusOr<bool> Handshake(absl::Span<const uint8_t>* input);
  // Decrypts up to `capacity` bytes of application data into `destination`. 0: nothing more
  // until more ciphertext arrives (input is then empty).
  absl::StatusOr<size_t> Open(void* destination, size_t capacity, absl::Span<const uint8_t>* input);
  // Encrypts `data` (all of it, in order) into output().
  absl::Status Seal(absl::Span<const iovec> data);
  absl::Status Seal(absl::Span<const uint8_t> data);
  // Appends close_notify to output().
  void Close();
  // Keeps ciphertext the caller read but the session has not taken yet (the handshake reads
  // whole socket buffers): the next Handshake or Open reads it before its own input.
  void CarryInput(absl::Span<const uint8_t> input);
  // Ciphertext carried or plaintext decrypted that Open has not returned yet: the connection
  // opens it before waiting for the socket.
  bool has_pending_input() const;

  const std::vector<uint8_t>& output() const { return output_; }
  bool has_output() const { return !output_.empty(); }
  // Moves output() into `sealed` (whose old contents are dropped, its capacity reused).
  void TakeOutput(std::vector<uint8_t>* sealed);
  // "TLS1.3-PSK-..." for Client::notes().
  std::string description() const;

 private:
  explicit TlsSession(std::shared_ptr<const TlsContext> context);
  static ssize_t Push(gnutls_transport_ptr_t self, const void* data, size_t size);
  static ssize_t Pull(gnutls_transport_ptr_t self, void* data, size_t size);
  absl::Status HandshakeError(int code) const;

  std::shared_ptr<const TlsContext> context_;
  gnutls_session_t session_ = nullptr;
  std::vector<uint8_t> output_;
  absl::Span<const uint8_t>* input_ = nullptr;  // during a call that may pull
  std::vector<uint8_t> carried_input_;
  size_t carried_offset_ = 0;
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_TLS_SESSION_H_
