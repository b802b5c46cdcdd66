// nbd-copy — copies between NBD exports, local files and pipes, sparsely, on nbdring's public
// API. The flags follow libnbd's nbdcopy.
//
//   nbd-copy [flags] SOURCE DESTINATION
//     SOURCE       an NBD URI (nbd://, nbd+unix://, ...), a file or block device, or "-" (stdin)
//     DESTINATION  the same, "-" for stdout, or "null:" to read and discard
//
//   --connections=4        NBD connections per export (only if the server allows multi-conn)
//   --requests=16          requests in flight per connection
//   --request-size=256k    bytes per request (k/m/g suffixes)
//   --threads=1            ring threads per NBD export
//   --progress, -p         a live progress line on stderr
//   --flush                flush the destination once everything is written
//   --destination-is-zero  the destination already reads as zeroes: skip zero ranges
//   --no-extents           do not ask the source which ranges are zero; copy every byte
//   --timeout=SECONDS      fail a request (and the copy) the server has not answered in time
//
// Exit status: 0 when every byte reached the destination; 1 with a one-line "nbd-copy: ..."
// message naming the side, offset and error when the copy failed; 2 for a command line that
// cannot be used.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tools/common/command_line.h"
#include "tools/copy/byte_size.h"
#include "tools/copy/copier.h"
#include "tools/copy/endpoint.h"
#include "tools/copy/progress.h"

ABSL_FLAG(int, connections, 4, "NBD connections per export (when the server allows multi-conn)");
ABSL_FLAG(int, requests, 16, "Requests in flight per connection");
ABSL_FLAG(std::string, request_size, "256k",
          "Bytes per request, with an optional k/m/g suffix; also spelled --request-size");
ABSL_FLAG(int, threads, 1, "Ring threads per NBD export");
ABSL_FLAG(bool, progress, false, "Show a progress line on stderr; also spelled -p");
ABSL_FLAG(bool, flush, false, "Flush the destination at the end");
ABSL_FLAG(bool, destination_is_zero, false,
          "The destination already reads as zeroes: zero ranges are skipped; also spelled "
          "--destination-is-zero");
ABSL_FLAG(bool, no_extents, false,
          "Copy every byte instead of asking the source which ranges are zero; also spelled "
          "--no-extents");
ABSL_FLAG(double, timeout, 0,
          "Seconds a request may wait for the server before the copy fails; 0 means no limit");

namespace {

constexpr int kExitFailure = 1;
using nbdtools::kExitUsage;

// nbdcopy spells its flags with dashes, which Abseil flag names cannot contain: rewrite
// "--request-size=1m" to "--request_size=1m" and "-p" to "--progress" before Abseil parses.
// `storage` is a deque so the rewritten strings never move once argv points at them.
void NormalizeArguments(int argc, char** argv, std::deque<std::string>* storage) {
  for (int i = 1; i < argc; ++i) {
    std::string argument = argv[i];
    if (argument == "--") break;
    if (argument == "-p") {
      argument = "--progress";
    } else if (argument.size() > 2 && argument[0] == '-' && argument[1] == '-') {
      const size_t name_end = std::min(argument.find('='), argument.size());
      for (size_t j = 2; j < name_end; ++j) {
        if (argument[j] == '-') argument[j] = '_';
      }
    } else {
      continue;
    }
    storage->push_back(std::move(argument));
    argv[i] = storage->back().data();
  }
}

int Fail(int exit_status, const absl::Status& status) {
  std::string message(status.message());
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "nbd-copy: %s\n", message.c_str());
  return exit_status;
}

}  // namespace

int main(int argc, char** argv) {
  std::deque<std::string> normalized;
  NormalizeArguments(argc, argv, &normalized);
  const std::vector<std::string> positional = nbdtools::ParseToolCommandLine(
      argc, argv,
      {"nbd-copy",
       "copies between NBD exports, files and pipes.\n"
       "usage: nbd-copy [flags] SOURCE DESTINATION\n"
       "  SOURCE/DESTINATION: an NBD URI, a file, \"-\" for stdin/stdout, or null: (destination)\n"
       "  flags may also be spelled with dashes (--request-size); -p is --progress",
       "tools/copy/"});
  if (positional.size() != 2) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "expected SOURCE and DESTINATION, got ", positional.size(),
                                " argument(s); see --help")));
  }
  absl::StatusOr<uint64_t> request_size = nbdcopy::ParseByteSize(absl::GetFlag(FLAGS_request_size));
  if (!request_size.ok()) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "--request-size: ", request_size.status().message())));
  }
  if (*request_size == 0 || *request_size > (uint64_t{1} << 30)) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "--request-size must be between 1 and 1g, got ",
                                *request_size)));
  }
  const int connections = absl::GetFlag(FLAGS_connections);
  const int requests = absl::GetFlag(FLAGS_requests);
  const int threads = absl::GetFlag(FLAGS_threads);
  const double timeout = absl::GetFlag(FLAGS_timeout);
  if (connections < 1 || requests < 1 || threads < 1 || timeout < 0) {
    return Fail(kExitUsage, absl::InvalidArgumentError(absl::StrCat(
                                "--connections, --requests and --threads must be at least 1 "
                                "and --timeout not negative; got ",
                                connections, ", ", requests, ", ", threads, " and ", timeout)));
  }
  // A closed stdout must surface as an EPIPE write error naming the offset, not kill us.
  signal(SIGPIPE, SIG_IGN);

  nbdcopy::NbdOptions nbd_options;
  nbd_options.connections = connections;
  nbd_options.threads = threads;
  nbd_options.requests_per_connection = static_cast<uint32_t>(requests);
  nbd_options.want_extents = !absl::GetFlag(FLAGS_no_extents);
  nbd_options.request_timeout = absl::Seconds(timeout);

  absl::StatusOr<std::unique_ptr<nbdcopy::Endpoint>> source =
      nbdcopy::Endpoint::Open(positional[0], nbdcopy::Side::kSource, nbd_options);
  if (!source.ok()) return Fail(kExitFailure, source.status());
  absl::StatusOr<std::unique_ptr<nbdcopy::Endpoint>> destination =
      nbdcopy::Endpoint::Open(positional[1], nbdcopy::Side::kDestination, nbd_options);
  if (!destination.ok()) return Fail(kExitFailure, destination.status());

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

  const bool show_progress = absl::GetFlag(FLAGS_progress);
  const nbdcopy::ProgressMeter meter(absl::Now());
  std::function<void(const nbdcopy::CopyProgress&)> on_tick;
  if (show_progress) {
    on_tick = [&meter](const nbdcopy::CopyProgress& progress) {
      // Padding wipes what a longer previous line left behind.
      std::fprintf(stderr, "\r%-72s",
                   meter.Line(progress.bytes_done, progress.total_bytes, absl::Now()).c_str());
      std::fflush(stderr);
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
  for (nbdcopy::Endpoint* endpoint : {destination->get(), source->get()}) {
    if (absl::Status closed = endpoint->Close(); !closed.ok()) {
      return Fail(kExitFailure, closed);
    }
  }
  return 0;
}
