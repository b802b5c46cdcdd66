// tests/runtime/test_support.h — shared pieces of the runtime's interop, integrity and
// concurrency tests: status assertions, deterministic random data, running external programs
// (qemu-img, nbdcopy), comparing buffers, checking advertised commands, reading extents, and a
// one-shot nbd-server. Completions are counted and waited for with
// tests/testing/completion_tracker.h, which this header includes.
//
// Everything here fails loudly (a gtest failure or an error status naming what went wrong)
// rather than hanging: waits have deadlines, child processes are killed with the test.
#ifndef NBDRING_TESTS_RUNTIME_TEST_SUPPORT_H_
#define NBDRING_TESTS_RUNTIME_TEST_SUPPORT_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/server_process.h"

// ASSERT_OK(expression returning absl::Status): fails the test with the status' message.
#define NBDRING_STATUS_CONCAT_INNER(a, b) a##b
#define NBDRING_STATUS_CONCAT(a, b) NBDRING_STATUS_CONCAT_INNER(a, b)
#define ASSERT_OK(expression)                                                  \
  do {                                                                         \
    const absl::Status nbdring_assert_status = (expression);                   \
    ASSERT_TRUE(nbdring_assert_status.ok()) << nbdring_assert_status;          \
  } while (false)
#define EXPECT_OK(expression)                                                  \
  do {                                                                         \
    const absl::Status nbdring_expect_status = (expression);                   \
    EXPECT_TRUE(nbdring_expect_status.ok()) << nbdring_expect_status;          \
  } while (false)
// ASSERT_OK_AND_ASSIGN(auto x, expression returning absl::StatusOr<T>). Variadic so that the
// expression may contain commas (braced argument lists).
#define ASSERT_OK_AND_ASSIGN(lhs, ...)                                         \
  ASSERT_OK_AND_ASSIGN_IMPL(NBDRING_STATUS_CONCAT(nbdring_status_or_, __LINE__), lhs, __VA_ARGS__)
#define ASSERT_OK_AND_ASSIGN_IMPL(holder, lhs, ...)                            \
  auto holder = (__VA_ARGS__);                                                 \
  ASSERT_TRUE(holder.ok()) << holder.status();                                 \
  lhs = std::move(holder).value()

namespace nbdring::testing {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * 1024;

// `size` bytes from a seeded generator: the same seed gives the same bytes in every run.
std::vector<uint8_t> RandomBytes(size_t size, uint64_t seed);

// Runs `argv` (argv[0] looked up in PATH) and waits for it. OK only if it exits 0; otherwise
// the error quotes the command line, the exit status and the first part of its output.
absl::Status RunCommand(const std::vector<std::string>& argv,
                        absl::Duration timeout = absl::Seconds(120));

// What a finished program printed and how it ended.
struct CommandResult {
  int exit_code = -1;  // -1 when it died of a signal
  std::string standard_output;
  std::string standard_error;
};
// Runs `argv` and captures both streams; an error only if it could not be run or timed out.
absl::StatusOr<CommandResult> RunAndCapture(const std::vector<std::string>& argv,
                                            absl::Duration timeout = absl::Seconds(60));

absl::StatusOr<std::vector<uint8_t>> ReadWholeFile(const std::string& path);
absl::Status WriteWholeFile(const std::string& path, absl::Span<const uint8_t> bytes);
// A sparse file of `size` bytes (ftruncate).
absl::Status CreateSparseFile(const std::string& path, uint64_t size);

// Empty when equal; otherwise names the size difference or the first differing offset and
// the bytes found there, e.g. "first difference at offset 4096: expected 0x1f, got 0x00".
std::string DescribeDifference(absl::Span<const uint8_t> expected, absl::Span<const uint8_t> got);

// The byte at `offset` of nbdkit's pattern plugin: every 8-byte word holds its own offset,
// big-endian.
inline uint8_t PatternByte(uint64_t offset) {
  uint64_t word = offset & ~uint64_t{7};
  return static_cast<uint8_t>(word >> (8 * (7 - (offset & 7))));
}

// The status flags (NBD_STATE_*) covering `offset`, given extents that start at `start`; -1
// when the extents end before `offset`.
int64_t ExtentFlagsAt(absl::Span<const Extent> extents, uint64_t start, uint64_t offset);
// The extents of `context_name` from a BlockStatusSync result, or an error if it is missing.
absl::StatusOr<std::vector<Extent>> ExtentsOf(
    const Client& client, const std::string& context_name,
    const std::vector<std::pair<uint32_t, std::vector<Extent>>>& extents_by_context);

// BlockStatusSync over [offset, offset + length), then the extents of `context_name` from it.
absl::StatusOr<std::vector<Extent>> ExtentsFor(Client& client, const std::string& context_name,
                                               uint64_t length, uint64_t offset,
                                               uint16_t flags = 0);

// Success when the export is writable and advertises flush, FUA, trim, write zeroes, fast
// zero, cache, DF and multi-conn (as nbdkit's memory plugin and qemu-nbd with --shared above
// 1 do); otherwise the failure names each one that is missing and the transmission flags.
::testing::AssertionResult WritableWithEveryCommand(const ExportInfo& info);

Operation MakeOperation(Command command, uint64_t offset, uint64_t length,
                        void* buffer = nullptr, uint16_t flags = 0);

// `operation` must be refused with `code` and a message containing `phrase`, both by
// Validate() and through Submit() (on_complete exactly once), and nothing may reach the wire
// (stats().wire_requests unchanged). Reports failures through gtest.
void ExpectRefused(Client& client, Operation operation, absl::StatusCode code,
                   const std::string& phrase);

// Default options but for asking for the meta contexts `names`.
ClientOptions WithMetaContexts(std::vector<std::string> names);

// Connects with `options` (uri filled in from `uri`), returning the error if any.
absl::StatusOr<std::unique_ptr<Client>> ConnectTo(const std::string& uri,
                                                  ClientOptions options = {});

// nbd-server serving `file` as export `name` on a private Unix socket for exactly one client:
// `nbd-server -d` does not fork, so it serves one connection and exits. Readiness is read from
// /proc/net/unix (the socket in the listening state) rather than probed with a connection,
// which would use up the only client. Killed with the test if still running.
class OneShotNbdServer {
 public:
  static absl::StatusOr<std::unique_ptr<OneShotNbdServer>> Start(
      const std::string& file, const std::string& name = "default",
      const std::vector<std::string>& extra_export_lines = {});
  ~OneShotNbdServer();
  std::string uri(const std::string& export_name = "default") const;
  const std::string& socket_path() const { return socket_path_; }

 private:
  OneShotNbdServer() = default;
  std::unique_ptr<nbd::testing::TempDir> dir_;
  std::string socket_path_;
  pid_t pid_ = -1;
};

}  // namespace nbdring::testing

#endif  // NBDRING_TESTS_RUNTIME_TEST_SUPPORT_H_
