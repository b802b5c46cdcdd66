// nbd/request.h — encoding transmission requests (C: messages of "Request message").
//
// Compact requests are 28 bytes (32-bit length); once NBD_OPT_EXTENDED_HEADERS is negotiated
// every request is 32 bytes (64-bit length) with its own magic. The encoder writes the header
// only: a write's payload follows on the wire and is sent from the caller's buffer.
#ifndef NBDRING_NBD_REQUEST_H_
#define NBDRING_NBD_REQUEST_H_

#include <cstddef>
#include <cstdint>

#include "nbd/wire.h"

namespace nbd {

struct RequestHeader {
  Command command = Command::kRead;
  uint16_t flags = 0;   // kCmdFlag*
  uint64_t cookie = 0;  // the spec's "handle": opaque, echoed in every reply to this request
  uint64_t offset = 0;
  uint64_t length = 0;  // must fit in 32 bits unless `extended`
};

inline constexpr size_t RequestHeaderSize(bool extended) {
  return extended ? kExtendedRequestSize : kCompactRequestSize;
}

// Writes the header into `out` (RequestHeaderSize(extended) bytes) and returns that size.
// The caller validates the request first; a compact header silently needs length < 2^32, which
// is checked here in debug builds only.
size_t EncodeRequest(const RequestHeader& request, bool extended, uint8_t* out);

// Decodes a header (for scripted servers and tests). Returns false when `size` is short or the
// magic is wrong for the chosen form.
bool DecodeRequest(const uint8_t* data, size_t size, bool extended, RequestHeader* request);

}  // namespace nbd

#endif  // NBDRING_NBD_REQUEST_H_
