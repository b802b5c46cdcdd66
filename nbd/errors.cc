#include "nbd/errors.h"

#include <cerrno>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nbd/wire.h"

namespace nbd {

constexpr char kNbdErrorPayloadUrl[] = "nbdring/nbd-error";

int NbdErrorToErrno(uint32_t nbd_error) {
  switch (nbd_error) {
    case 0: return 0;
    case kEPerm: return EPERM;
    case kEIo: return EIO;
    case kENoMem: return ENOMEM;
    case kEInval: return EINVAL;
    case kENoSpc: return ENOSPC;
    case kEOverflow: return EOVERFLOW;
    case kENotSup: return ENOTSUP;
    case kEShutdown: return ESHUTDOWN;
  }
  return EINVAL;  // proto.md: unknown error values are to be treated as EINVAL
}

uint32_t ErrnoToNbdError(int error_number) {
  switch (error_number) {
    case 0: return 0;
    case EPERM: return kEPerm;
    case EIO: return kEIo;
    case ENOMEM: return kENoMem;
    case EINVAL: return kEInval;
    case ENOSPC: return kENoSpc;
    case EOVERFLOW: return kEOverflow;
    case ENOTSUP: return kENotSup;
    case ESHUTDOWN: return kEShutdown;
  }
  return kEInval;
}

const char* NbdErrorName(uint32_t nbd_error) {
  switch (nbd_error) {
    case kEPerm: return "NBD_EPERM";
    case kEIo: return "NBD_EIO";
    case kENoMem: return "NBD_ENOMEM";
    case kEInval: return "NBD_EINVAL";
    case kENoSpc: return "NBD_ENOSPC";
    case kEOverflow: return "NBD_EOVERFLOW";
    case kENotSup: return "NBD_ENOTSUP";
    case kEShutdown: return "NBD_ESHUTDOWN";
  }
  return "unknown NBD error";
}

namespace {

absl::StatusCode CodeFor(uint32_t nbd_error) {
  switch (nbd_error) {
    case kEPerm: return absl::StatusCode::kPermissionDenied;
    case kEIo: return absl::StatusCode::kDataLoss;
    case kENoMem: return absl::StatusCode::kResourceExhausted;
    case kEInval: return absl::StatusCode::kInvalidArgument;
    case kENoSpc: return absl::StatusCode::kResourceExhausted;
    case kEOverflow: return absl::StatusCode::kOutOfRange;
    case kENotSup: return absl::StatusCode::kUnimplemented;
    case kEShutdown: return absl::StatusCode::kUnavailable;
  }
  return absl::StatusCode::kInvalidArgument;  // unknown values mean EINVAL
}

}  // namespace

absl::Status NbdErrorToStatus(uint32_t nbd_error, absl::string_view context,
                              absl::string_view server_message) {
  std::string message = absl::StrCat(context, ": server replied ", NbdErrorName(nbd_error));
  if (CodeFor(nbd_error) == absl::StatusCode::kInvalidArgument && nbd_error != kEInval) {
    absl::StrAppend(&message, " (", nbd_error, ", treated as NBD_EINVAL)");
  }
  if (!server_message.empty()) absl::StrAppend(&message, ": ", server_message);
  absl::Status status(CodeFor(nbd_error), message);
  // The exact value matters to the runtime (NBD_ESHUTDOWN asks for a soft disconnect), and
  // several values share a status code.
  status.SetPayload(kNbdErrorPayloadUrl, absl::Cord(absl::StrCat(nbd_error)));
  return status;
}

std::optional<uint32_t> NbdErrorOf(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kNbdErrorPayloadUrl);
  uint32_t value = 0;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &value)) return std::nullopt;
  return value;
}

int StatusToErrno(const absl::Status& status) {
  // A server's error carries its exact NBD value: codes alone cannot tell ENOMEM from ENOSPC.
  if (std::optional<uint32_t> nbd_error = NbdErrorOf(status); nbd_error.has_value()) {
    return NbdErrorToErrno(*nbd_error);
  }
  switch (status.code()) {
    case absl::StatusCode::kOk: return 0;
    case absl::StatusCode::kPermissionDenied: return EPERM;
    case absl::StatusCode::kUnauthenticated: return EACCES;  // TLS refused our peer or us
    case absl::StatusCode::kDataLoss: return EIO;
    case absl::StatusCode::kResourceExhausted: return ENOSPC;
    case absl::StatusCode::kInvalidArgument: return EINVAL;
    case absl::StatusCode::kOutOfRange: return EOVERFLOW;
    case absl::StatusCode::kUnimplemented: return ENOTSUP;
    case absl::StatusCode::kUnavailable: return ESHUTDOWN;
    case absl::StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case absl::StatusCode::kCancelled: return ECANCELED;
    case absl::StatusCode::kNotFound: return ENOENT;  // e.g. a server command not in PATH
    default: return EIO;
  }
}

}  // namespace nbd
