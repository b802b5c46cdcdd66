// nbd-copy — copies between NBD exports, local files and pipes, sparsely, on nbdring's public
// API. The flags follow libnbd's nbdcopy.
//
//   nbd-copy [flags] SOURCE DESTINATION
//     SOURCE       an NBD URI (nbd://, nbd+unix://, ...), a file or block device, or "-" (stdin)
//     DESTINATION  the same, "-" for stdout, or "null:" to read and discard
//
//   The flags are nbdcopy's (libnbd 1.14), with its spellings: tools/copy/arguments.h maps
//   -C/-R/-S/-T/-p/-v/-V, --progress=FD and --target-is-zero onto the flags below.
//   --timeout, --retries, --stats and --dirty-bitmap (incremental copies) are ours; --threads
//   is ring threads, not copying threads (see its help).
//
// Exit status: 0 when every byte reached the destination; 1 with a one-line "nbd-copy: ..."
// message naming the side, offset and error when the copy failed; 2 for a command line that
// cannot be used.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tools/common/command_line.h"
#include "tools/copy/arguments.h"
#include "tools/copy/byte_size.h"
#include "tools/copy/copier.h"
#include "tools/copy/copy_stats.h"
#include "tools/copy/endpoint.h"
#include "tools/copy/progress.h"

ABSL_FLAG(int, connections, 4,
          "NBD connections per export, when the server allows multi-conn; also -C N");
ABSL_FLAG(int, requests, 16, "Requests in flight per connection; also -R N");
ABSL_FLAG(std::string, request_size, "256k",
          "Bytes per request, with an optional k/m suffix, at most 32m (NBD's limit)");
ABSL_FLAG(std::string, queue_size, "16m",
          "Bytes of requests in flight per connection, at most: --requests is lowered to "
          "fit --queue-size / --request-size");
ABSL_FLAG(int, threads, 1,
          "Ring threads per NBD export, also -T N; 0 means one per core, up to --connections "
          "(nbdcopy's copying threads: nbd-copy copies on the rings' completions instead)");
ABSL_FLAG(bool, progress, false, "Show a live progress line on stderr; also -p");
ABSL_FLAG(int, progress_fd, -1,
          "Write nbdcopy's machine-readable progress, \"N/100\" lines, to this file "
          "descriptor; spelled --progress=FD");
ABSL_FLAG(bool, flush, false, "Flush the destination (NBD_CMD_FLUSH, fdatasync) at the end");
ABSL_FLAG(bool, destination_is_zero, false,
          "The destination already reads as zeroes: zero ranges are skipped, not written; "
          "also --target-is-zero");
ABSL_FLAG(bool, allocated, false,
          "Make the destination fully allocated: zero ranges are written (zero buffers to "
          "files, NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_NO_HOLE to exports), never holes");
ABSL_FLAG(std::string, sparse, "4k",
          "Whole blocks of this many zero bytes in the data are made sparse on the "
          "destination (holes, or NBD_CMD_WRITE_ZEROES); 0 turns detection off; also -S N");
ABSL_FLAG(bool, no_extents, false,
          "Copy every byte instead of asking the source which ranges are zero");
ABSL_FLAG(bool, synchronous, false,
          "One request at a time on one connection, in order (nbdcopy's libnbd synchronous "
          "API; streams need no such flag here: they are always written in order)");
ABSL_FLAG(bool, verbose, false, "Say on stderr what was negotiated and how the copy runs; "
          "also -v");
ABSL_FLAG(int, retries, 0,
          "When a server connection is lost, reconnect up to this many times (backing off "
          "0.1 s to 2 s) and send what was in flight again; 0: the copy fails at the first "
          "loss. nbdcopy has no such flag");
ABSL_FLAG(bool, stats, false,
          "At exit, print each NBD endpoint's requests, errors, reconnects, bytes and latency "
          "percentiles on stderr");
ABSL_FLAG(std::string, dirty_bitmap, "",
          "Incremental copy: DESTINATION already holds the previous copy, and only the extents "
          "the source's dirty bitmap NAME (qemu:dirty-bitmap:NAME, e.g. qemu-nbd -B NAME) "
          "marks dirty are copied, as data or as zeroes; the source must be an NBD URI that "
          "offers the bitmap. nbdcopy has no such flag");
ABSL_FLAG(double, timeout, 0,
          "Seconds a request may wait for the server before the copy fails; 0 means no limit");

namespace {

constexpr int kExitFailure = 1;
using nbdtools::kExitUsage;

int Fail(int exit_status, const absl::Status& status) {
  std::string message(status.message());
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "nbd-copy: %s\n", message.c_str());
  return exit_status;
}

// A byte-count flag's value, or a usage error naming the flag and the value.
absl::StatusOr<uint64_t> SizeFlag(absl::string_view name, const std::string& text,
                                  uint64_t minimum, uint64_t maximum) {
  absl::StatusOr<uint64_t> bytes = nbdcopy::ParseByteSize(text);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", bytes.status().message()));
  }
  if (*bytes < minimum || *bytes > maximum) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", text, ": must be between ",
                                                   minimum, " and ", maximum, " bytes"));
  }
  return *bytes;
}

// Writes `text` whole to `fd`; progress is best effort, so a failure is only reported once.
void WriteProgress(int fd, const std::string& text) {
  static bool reported = false;
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t put = write(fd, text.data() + done, text.size() - done);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) {
      if (!reported) std::fprintf(stderr, "nbd-copy: --progress=%d: %s\n", fd, strerror(errno));
      reported = true;
      return;
    }
    done += static_cast<size_t>(put);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::deque<std::string> rewritten;
  if (absl::Status status = nbdcopy::RewriteNbdcopyArguments(&argc, argv, &rewritten);
      !status.ok()) {
    return Fail(kExitUsage, status);
  }
  const std::vector<std::string> positional = nbdtools::ParseToolCommandLine(
      argc, argv,
      {"nbd-copy",
       "copies between NBD exports, files and pipes, with nbdcopy's flags.\n"
       "usage: nbd-copy [flags] SOURCE DESTINATION\n"
       "  SOURCE/DESTINATION: an NBD URI, a file, \"-\" for stdin/stdout, or null: (destination)\n"
       "  flags may be spelled with dashes (--request-size); short forms: -C N, -R N, -S N,\n"
       "  -T N, -p, -v, -V; --target-is-zero is --destination-is-zero.\n"
       "  --dirty-bitmap=NAME: copy only what the source's dirty bitmap NAME marks, onto the\n"
       "  previous copy.\n"
       "  Not supported: nbdcopy's [ CMD ARGS ... ] subprocess servers.\n"
       "  Exit status: 0 copied, 1 the copy failed (one line says why), 2 bad command line",
       "tools/copy/"});
  if (positional.size() != 2) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "expected SOURCE and DESTINATION, got ", positional.size(),
                                " argument(s); see --help")));
  }
  // nbdcopy's limits: requests up to NBD's 32 MiB.
  const absl::StatusOr<uint64_t> request_size =
      SizeFlag("request-size", absl::GetFlag(FLAGS_request_size), 1, uint64_t{32} << 20);
  if (!request_size.ok()) return Fail(kExitUsage, request_size.status());
  const absl::StatusOr<uint64_t> queue_size =
      SizeFlag("queue-size", absl::GetFlag(FLAGS_queue_size), 1, uint64_t{1} << 40);
  if (!queue_size.ok()) return Fail(kExitUsage, queue_size.status());
  const absl::StatusOr<uint64_t> sparse_size =
      SizeFlag("sparse", absl::GetFlag(FLAGS_sparse), 0, uint64_t{32} << 20);
  if (!sparse_size.ok()) return Fail(kExitUsage, sparse_size.status());
  const bool synchronous = absl::GetFlag(FLAGS_synchronous);
  int connections = absl::GetFlag(FLAGS_connections);
  int requests = absl::GetFlag(FLAGS_requests);
  int threads = absl::GetFlag(FLAGS_threads);
  const double timeout = absl::GetFlag(FLAGS_timeout);
  if (connections < 1 || requests < 1 || threads < 0 || timeout < 0) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "--connections and --requests must be at least 1, --threads "
                                "and --timeout not negative; got ",
                                connections, ", ", requests, ", ", threads, " and ", timeout)));
  }
  const int progress_fd = absl::GetFlag(FLAGS_progress_fd);
  if (progress_fd != -1 && fcntl(progress_fd, F_GETFD) < 0) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "--progress=", progress_fd, ": not an open file descriptor")));
  }
  if (synchronous) connections = requests = 1;
  // At most --queue-size bytes in flight per connection, as in nbdcopy.
  requests = static_cast<int>(std::clamp<uint64_t>(*queue_size / *request_size, 1,
                                                   static_cast<uint64_t>(requests)));
  if (threads == 0) {
    threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, connections);
  }
  // A closed stdout must surface as an EPIPE write error naming the offset, not kill us.
  signal(SIGPIPE, SIG_IGN);

  nbdcopy::NbdOptions nbd_options;
  nbd_options.connections = connections;
  nbd_options.threads = threads;
  nbd_options.requests_per_connection = static_cast<uint32_t>(requests);
  nbd_options.want_extents = !absl::GetFlag(FLAGS_no_extents);
  nbd_options.request_timeout = absl::Seconds(timeout);
  nbd_options.retries = absl::GetFlag(FLAGS_retries);
  nbd_options.dirty_bitmap = absl::GetFlag(FLAGS_dirty_bitmap);
  const bool incremental = !nbd_options.dirty_bitmap.empty();
  // An empty new file is no previous copy, and leaving one behind after the failure is worse.
  nbd_options.create_file = !incremental;
  if (incremental && absl::GetFlag(FLAGS_destination_is_zero)) {
    // The destination holds the previous copy, so it is not all zeroes.
    return Fail(kExitUsage, absl::InvalidArgumentError(
                                "--dirty-bitmap and --destination-is-zero contradict each other: "
                                "an incremental copy's destination holds the previous copy"));
  }
  if (incremental && positional[1] == "-") {
    return Fail(kExitUsage, absl::InvalidArgumentError(
                                "--dirty-bitmap cannot write to stdout (-): an incremental copy "
                                "needs the previous copy at the destination"));
  }
  if (nbd_options.retries < 0 || nbd_options.retries > 1000) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "--retries must be between 0 and 1000, got ",
                                nbd_options.retries)));
  }

  absl::StatusOr<std::unique_ptr<nbdcopy::Endpoint>> source =
      nbdcopy::Endpoint::Open(positional[0], nbdcopy::Side::kSource, nbd_options);
  if (!source.ok()) return Fail(kExitFailure, source.status());
  absl::StatusOr<std::unique_ptr<nbdcopy::Endpoint>> destination =
      nbdcopy::Endpoint::Open(positional[1], nbdcopy::Side::kDestination, nbd_options);
  if (!destination.ok()) return Fail(kExitFailure, destination.status());
  if (incremental && (*destination)->kind() == nbdcopy::EndpointKind::kStream) {  // a FIFO
    return Fail(kExitFailure,
                absl::InvalidArgumentError(absl::StrCat(
                    "--dirty-bitmap: destination ", positional[1],
                    " is a stream; an incremental copy needs the previous copy there (an NBD "
                    "URI, a file or a block device)")));
  }

  // One buffer per request the connections can have in flight.
  int used_connections = 1;
  for (const nbdcopy::Endpoint* endpoint : {source->get(), destination->get()}) {
    if (endpoint->kind() == nbdcopy::EndpointKind::kNbd) {
      used_connections = std::max(used_connections, endpoint->client()->connections());
    }
  }
  nbdcopy::CopyOptions copy_options;
  copy_options.request_size = *request_size;
  copy_options.slots = used_connections * requests;
  copy_options.destination_is_zero = absl::GetFlag(FLAGS_destination_is_zero);
  copy_options.use_extents = !absl::GetFlag(FLAGS_no_extents);
  copy_options.flush = absl::GetFlag(FLAGS_flush);
  copy_options.allocated = absl::GetFlag(FLAGS_allocated);
  copy_options.sparse_block_size = *sparse_size;
  copy_options.incremental = incremental;
  if (absl::GetFlag(FLAGS_verbose)) {
    for (const nbdcopy::Endpoint* endpoint : {source->get(), destination->get()}) {
      std::fprintf(stderr, "nbd-copy: %s %s: %s bytes, %d connection(s)\n",
                   nbdcopy::SideName(endpoint->side()), endpoint->spec().c_str(),
                   endpoint->size().has_value() ? absl::StrCat(*endpoint->size()).c_str()
                                                : "unknown",
                   endpoint->kind() == nbdcopy::EndpointKind::kNbd
                       ? endpoint->client()->connections()
                       : 0);
    }
    std::fprintf(stderr,
                 "nbd-copy: %d request(s) of %llu bytes in flight, %d ring thread(s) per "
                 "export, sparse blocks %llu bytes%s%s%s%s\n",
                 copy_options.slots, static_cast<unsigned long long>(*request_size), threads,
                 static_cast<unsigned long long>(*sparse_size),
                 copy_options.allocated ? ", allocated" : "",
                 copy_options.destination_is_zero ? ", destination is zero" : "",
                 copy_options.flush ? ", flush at the end" : "",
                 incremental ? absl::StrCat(", only what dirty bitmap ", nbd_options.dirty_bitmap,
                                            " marks").c_str()
                             : "");
  }

  const bool show_progress = absl::GetFlag(FLAGS_progress);
  const nbdcopy::ProgressMeter meter(absl::Now());
  std::function<void(const nbdcopy::CopyProgress&)> on_tick;
  if (show_progress || progress_fd != -1) {
    if (progress_fd != -1) {
      WriteProgress(progress_fd, nbdcopy::MachineProgressLine(0, std::nullopt, false));
    }
    on_tick = [&meter, show_progress, progress_fd](const nbdcopy::CopyProgress& progress) {
      if (progress_fd != -1) {
        WriteProgress(progress_fd, nbdcopy::MachineProgressLine(
                                       progress.bytes_done, progress.total_bytes, false));
      }
      if (show_progress) {
        // Padding wipes what a longer previous line left behind.
        std::fprintf(stderr, "\r%-72s",
                     meter.Line(progress.bytes_done, progress.total_bytes, absl::Now()).c_str());
        std::fflush(stderr);
      }
    };
  }
  nbdcopy::Copier copier(source->get(), destination->get(), copy_options);
  absl::Status status = copier.Run(on_tick, absl::Milliseconds(250));
  if (show_progress) std::fprintf(stderr, "\n");
  if (!status.ok()) {
    // Run() returned only after every request completed, so closing cannot add news; the
    // copy's error is the one worth reporting.
    source->get()->Close().IgnoreError();
    destination->get()->Close().IgnoreError();
    return Fail(kExitFailure, status);
  }
  if (absl::GetFlag(FLAGS_stats)) {
    for (const nbdcopy::Endpoint* endpoint : {source->get(), destination->get()}) {
      if (endpoint->kind() != nbdcopy::EndpointKind::kNbd) continue;
      std::fprintf(stderr, "nbd-copy: %s\n",
                   nbdcopy::StatsLine(nbdcopy::SideName(endpoint->side()), endpoint->spec(),
                                      endpoint->client()->stats())
                       .c_str());
    }
  }
  for (nbdcopy::Endpoint* endpoint : {destination->get(), source->get()}) {
    if (absl::Status closed = endpoint->Close(); !closed.ok()) {
      return Fail(kExitFailure, closed);
    }
  }
  if (progress_fd != -1) {
    WriteProgress(progress_fd, nbdcopy::MachineProgressLine(0, std::nullopt, true));
  }
  return 0;
}
