#include "nbd/request.h"

#include <cassert>

namespace nbd {

size_t EncodeRequest(const RequestHeader& request, bool extended, uint8_t* out) {
  Store32(out, extended ? kExtendedRequestMagic : kRequestMagic);
  Store16(out + 4, request.flags);
  Store16(out + 6, static_cast<uint16_t>(request.command));
  Store64(out + 8, request.cookie);
  Store64(out + 16, request.offset);
  if (extended) {
    Store64(out + 24, request.length);
    return kExtendedRequestSize;
  }
  assert(request.length <= UINT32_MAX);
  Store32(out + 24, static_cast<uint32_t>(request.length));
  return kCompactRequestSize;
}

bool DecodeRequest(const uint8_t* data, size_t size, bool extended, RequestHeader* request) {
  if (size < RequestHeaderSize(extended)) return false;
  if (Load32(data) != (extended ? kExtendedRequestMagic : kRequestMagic)) return false;
  request->flags = Load16(data + 4);
  request->command = static_cast<Command>(Load16(data + 6));
  request->cookie = Load64(data + 8);
  request->offset = Load64(data + 16);
  request->length = extended ? Load64(data + 24) : Load32(data + 24);
  return true;
}

}  // namespace nbd
