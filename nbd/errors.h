// nbd/errors.h — NBD error values, host errno and absl::Status, in both directions.
//
// The wire carries the spec's own numbers (NBD_EIO = 5, ...), which happen to equal Linux's
// errno values but are defined by the protocol, not by the host. Unknown values from a server
// are treated as EINVAL, as the spec tells clients to do.
#ifndef NBDRING_NBD_ERRORS_H_
#define NBDRING_NBD_ERRORS_H_

#include <cstdint>
#include <optional>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace nbd {

// NBD error value -> host errno (unknown -> EINVAL).
int NbdErrorToErrno(uint32_t nbd_error);
// Host errno -> NBD error value, for tests and scripted servers (unmapped -> NBD_EINVAL).
uint32_t ErrnoToNbdError(int error_number);
// "NBD_EIO", ... ; "unknown NBD error" for anything else.
const char* NbdErrorName(uint32_t nbd_error);

// The absl::Status a request fails with when the server answers with `nbd_error`:
// EPERM->PermissionDenied, EIO->DataLoss... see errors.cc for the table. The message names
// the error and includes `server_message` (from an error chunk) when there is one.
absl::Status NbdErrorToStatus(uint32_t nbd_error, absl::string_view context,
                              absl::string_view server_message = {});

// The NBD error value NbdErrorToStatus() attached to `status` (as a Status payload), or
// nullopt when the status did not come from a server's error reply.
std::optional<uint32_t> NbdErrorOf(const absl::Status& status);

// The errno a completion callback in a C API would see for `status` (EIO when unsure).
int StatusToErrno(const absl::Status& status);

}  // namespace nbd

#endif  // NBDRING_NBD_ERRORS_H_
