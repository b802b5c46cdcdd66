// Tests of nbd/errors.h: the NBD_E* <-> errno table in both directions, the spec's rule that
// unknown values mean EINVAL, names, and the absl::Status a failed request carries.
#include "nbd/errors.h"

#include <cerrno>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nbd/wire.h"

namespace nbd {
namespace {

struct Mapping {
  uint32_t nbd_error;
  int error_number;
  const char* name;
  absl::StatusCode code;
};

// proto.md "Error values", with the errno each value was chosen to match and the status code
// errors.cc documents.
const Mapping kMappings[] = {
    {kEPerm, EPERM, "NBD_EPERM", absl::StatusCode::kPermissionDenied},
    {kEIo, EIO, "NBD_EIO", absl::StatusCode::kDataLoss},
    {kENoMem, ENOMEM, "NBD_ENOMEM", absl::StatusCode::kResourceExhausted},
    {kEInval, EINVAL, "NBD_EINVAL", absl::StatusCode::kInvalidArgument},
    {kENoSpc, ENOSPC, "NBD_ENOSPC", absl::StatusCode::kResourceExhausted},
    {kEOverflow, EOVERFLOW, "NBD_EOVERFLOW", absl::StatusCode::kOutOfRange},
    {kENotSup, ENOTSUP, "NBD_ENOTSUP", absl::StatusCode::kUnimplemented},
    {kEShutdown, ESHUTDOWN, "NBD_ESHUTDOWN", absl::StatusCode::kUnavailable},
};

TEST(NbdErrors, EveryValueMapsToItsErrnoAndBack) {
  for (const Mapping& mapping : kMappings) {
    EXPECT_EQ(NbdErrorToErrno(mapping.nbd_error), mapping.error_number) << mapping.name;
    EXPECT_EQ(ErrnoToNbdError(mapping.error_number), mapping.nbd_error) << mapping.name;
  }
}

TEST(NbdErrors, ZeroMeansSuccessBothWays) {
  EXPECT_EQ(NbdErrorToErrno(0), 0);
  EXPECT_EQ(ErrnoToNbdError(0), 0u);
}

TEST(NbdErrors, UnknownWireValuesAreTreatedAsEinval) {
  // proto.md: "The client SHOULD treat an unexpected error value as if it had been NBD_EINVAL".
  for (uint32_t unknown : {2u, 4u, 13u, 61u, 110u, 0x80000000u, 0xffffffffu}) {
    EXPECT_EQ(NbdErrorToErrno(unknown), EINVAL) << unknown;
  }
}

TEST(NbdErrors, UnmappedErrnoBecomesNbdEinval) {
  for (int unmapped : {ENOENT, EAGAIN, EBADF, EDQUOT, EFBIG, ETIMEDOUT, -1, 100000}) {
    EXPECT_EQ(ErrnoToNbdError(unmapped), kEInval) << unmapped;
  }
}

TEST(NbdErrors, Names) {
  for (const Mapping& mapping : kMappings) {
    EXPECT_STREQ(NbdErrorName(mapping.nbd_error), mapping.name);
  }
  EXPECT_STREQ(NbdErrorName(0), "unknown NBD error");
  EXPECT_STREQ(NbdErrorName(2), "unknown NBD error");
  EXPECT_STREQ(NbdErrorName(0xffffffff), "unknown NBD error");
}

TEST(NbdErrorToStatus, CodeAndMessageForEveryValue) {
  for (const Mapping& mapping : kMappings) {
    const absl::Status status = NbdErrorToStatus(mapping.nbd_error, "NBD_CMD_READ at 4096");
    EXPECT_EQ(status.code(), mapping.code) << mapping.name;
    EXPECT_EQ(status.message(),
              std::string("NBD_CMD_READ at 4096: server replied ") + mapping.name);
  }
}

TEST(NbdErrorToStatus, IncludesTheServersMessage) {
  const absl::Status status = NbdErrorToStatus(kEIo, "NBD_CMD_WRITE", "disk on fire");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(status.message(), "NBD_CMD_WRITE: server replied NBD_EIO: disk on fire");
}

TEST(NbdErrorToStatus, UnknownValueSaysItWasTreatedAsEinval) {
  const absl::Status status = NbdErrorToStatus(61, "NBD_CMD_TRIM", "no data");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "NBD_CMD_TRIM: server replied unknown NBD error (61, treated as NBD_EINVAL): no data");
}

TEST(StatusToErrno, InvertsNbdErrorToStatus) {
  for (const Mapping& mapping : kMappings) {
    // Exact even where codes are shared: NBD_ENOMEM and NBD_ENOSPC are both kResourceExhausted.
    EXPECT_EQ(StatusToErrno(NbdErrorToStatus(mapping.nbd_error, "op")), mapping.error_number)
        << mapping.name;
  }
}

TEST(StatusToErrno, ResourceExhaustedWithoutAServerErrorIsEnospc) {
  EXPECT_EQ(StatusToErrno(absl::ResourceExhaustedError("queue full")), ENOSPC);
}

TEST(StatusToErrno, OtherCodes) {
  EXPECT_EQ(StatusToErrno(absl::OkStatus()), 0);
  EXPECT_EQ(StatusToErrno(absl::DeadlineExceededError("t")), ETIMEDOUT);
  EXPECT_EQ(StatusToErrno(absl::CancelledError("c")), ECANCELED);
  EXPECT_EQ(StatusToErrno(absl::NotFoundError("n")), ENOENT);  // a server command not in PATH
  // Anything without a better answer is an I/O error.
  EXPECT_EQ(StatusToErrno(absl::InternalError("i")), EIO);
  EXPECT_EQ(StatusToErrno(absl::UnknownError("u")), EIO);
  EXPECT_EQ(StatusToErrno(absl::FailedPreconditionError("f")), EIO);
}

}  // namespace
}  // namespace nbd
