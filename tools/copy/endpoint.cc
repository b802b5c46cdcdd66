#include "tools/copy/endpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tools/copy/dirty_map.h"

namespace nbdcopy {
namespace {

constexpr const char kBaseAllocation[] = "base:allocation";

bool IsNbdUri(const std::string& spec) {
  for (const char* scheme : {"nbd://", "nbds://", "nbd+", "nbds+"}) {
    if (absl::StartsWith(spec, scheme)) return true;
  }
  return false;
}

absl::Status ErrnoError(absl::string_view what, int error) {
  // Not absl::ErrnoToStatus: it appends strerror itself, which would say it twice.
  return absl::Status(absl::ErrnoToStatusCode(error),
                      absl::StrCat(what, ": ", std::strerror(error)));
}

}  // namespace

const char* SideName(Side side) { return side == Side::kSource ? "source" : "destination"; }

absl::StatusOr<std::unique_ptr<Endpoint>> Endpoint::Open(const std::string& spec, Side side,
                                                         const NbdOptions& nbd_options) {
  std::unique_ptr<Endpoint> endpoint(new Endpoint());
  endpoint->side_ = side;
  endpoint->spec_ = spec;
  const char* side_name = SideName(side);

  if (spec == "null:") {
    if (side == Side::kSource) {
      return absl::InvalidArgumentError("null: can only be a destination");
    }
    endpoint->kind_ = EndpointKind::kNull;
    return endpoint;
  }

  if (spec == "-") {
    endpoint->kind_ = EndpointKind::kStream;
    endpoint->fd_ = side == Side::kSource ? STDIN_FILENO : STDOUT_FILENO;
    return endpoint;
  }

  const bool incremental_source = side == Side::kSource && !nbd_options.dirty_bitmap.empty();
  if (incremental_source && !IsNbdUri(spec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dirty-bitmap=", nbd_options.dirty_bitmap, " needs an NBD source that exports the "
        "bitmap (qemu-nbd -B ", nbd_options.dirty_bitmap, "); source ", spec, " is not a URI"));
  }

  if (IsNbdUri(spec)) {
    nbdring::ClientOptions options;
    options.uri = spec;
    options.connections = nbd_options.connections;
    options.threads = nbd_options.threads;
    options.inflight_limit = nbd_options.requests_per_connection;
    options.request_timeout = nbd_options.request_timeout;
    if (nbd_options.retries > 0) {
      options.reconnect = true;
      options.reconnect_attempts = nbd_options.retries;
      // Enough for every attempt: each waits for the server up to connect_timeout (10 s),
      // and the back-off between them is at most 2 s.
      options.reconnect_delay = absl::Seconds(12) * nbd_options.retries;
    }
    if (side == Side::kSource && nbd_options.want_extents) {
      options.meta_contexts = {kBaseAllocation};
    }
    if (incremental_source) {
      endpoint->dirty_bitmap_context_ = DirtyBitmapContext(nbd_options.dirty_bitmap);
      options.meta_contexts.push_back(endpoint->dirty_bitmap_context_);
    }
    absl::StatusOr<std::unique_ptr<nbdring::Client>> client = nbdring::Client::Connect(options);
    if (!client.ok()) {
      return absl::Status(client.status().code(),
                          absl::StrCat(side_name, " ", spec, ": ", client.status().message()));
    }
    endpoint->kind_ = EndpointKind::kNbd;
    endpoint->client_ = std::move(*client);
    endpoint->size_ = endpoint->client_->size();
    if (incremental_source && endpoint->client_->export_info().FindMetaContext(
                                  endpoint->dirty_bitmap_context_) == nullptr) {
      // Copying everything or nothing instead would look like success; neither is what was
      // asked for.
      return absl::NotFoundError(absl::StrCat(
          "source ", spec, " does not offer dirty bitmap \"", nbd_options.dirty_bitmap,
          "\" (meta context ", endpoint->dirty_bitmap_context_,
          "; export it with qemu-nbd -B NAME); nothing was copied"));
    }
    if (side == Side::kDestination && endpoint->client_->export_info().read_only()) {
      return absl::FailedPreconditionError(
          absl::StrCat("destination ", spec, " is read-only: the server does not accept writes"));
    }
    return endpoint;
  }

  const int flags = side == Side::kSource
                        ? O_RDONLY
                        : (O_WRONLY | (nbd_options.create_file ? O_CREAT : 0));
  const int fd = open(spec.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int error = errno;
    // "nbdx://host" or "nbd:/x" is most likely a mistyped URI, not a missing file.
    const bool looks_like_uri = absl::StrContains(spec, ":/");
    return ErrnoError(absl::StrCat("cannot open ", side_name, " ", spec,
                                   looks_like_uri && error == ENOENT
                                       ? " (not an NBD URI: those start with nbd://, nbds://, "
                                         "nbd+unix://, nbds+unix://, nbd+vsock:// or "
                                         "nbds+vsock://)"
                                       : ""),
                      error);
  }
  endpoint->fd_ = fd;
  endpoint->owns_fd_ = true;
  struct stat status;
  if (fstat(fd, &status) != 0) return ErrnoError(absl::StrCat("cannot stat ", spec), errno);
  if (S_ISREG(status.st_mode)) {
    endpoint->kind_ = EndpointKind::kFile;
    endpoint->regular_file_ = true;
    endpoint->size_ = static_cast<uint64_t>(status.st_size);
  } else if (S_ISBLK(status.st_mode)) {
    uint64_t bytes = 0;
    if (ioctl(fd, BLKGETSIZE64, &bytes) != 0) {
      return ErrnoError(absl::StrCat("cannot get the size of block device ", spec), errno);
    }
    endpoint->kind_ = EndpointKind::kFile;
    endpoint->size_ = bytes;
  } else {
    // A FIFO or character device given by name: read or written strictly in order.
    endpoint->kind_ = EndpointKind::kStream;
  }
  return endpoint;
}

Endpoint::~Endpoint() {
  if (owns_fd_ && fd_ >= 0) close(fd_);
}

std::optional<uint64_t> Endpoint::maximum_request() const {
  if (kind_ != EndpointKind::kNbd) return std::nullopt;
  return client_->export_info().block_size.maximum;
}

uint64_t Endpoint::minimum_request() const {
  if (kind_ != EndpointKind::kNbd) return 1;
  return std::max<uint64_t>(client_->export_info().block_size.minimum, 1);
}

absl::StatusOr<std::vector<Range>> Endpoint::MapSource(uint64_t offset, uint64_t length,
                                                       bool use_extents) const {
  if (!dirty_bitmap_context_.empty()) return MapDirtySource(offset, length, use_extents);
  if (use_extents && kind_ == EndpointKind::kNbd &&
      client_->export_info().FindMetaContext(kBaseAllocation) != nullptr) {
    return MapNbdSource(offset, length);
  }
  if (use_extents && kind_ == EndpointKind::kFile && regular_file_) {
    return MapFileSource(offset, length);
  }
  return std::vector<Range>{Range{offset, size_.value_or(0) - offset, false}};
}

absl::StatusOr<std::vector<Range>> Endpoint::MapNbdSource(uint64_t offset,
                                                          uint64_t length) const {
  const uint32_t context_id = client_->export_info().FindMetaContext(kBaseAllocation)->id;
  const uint64_t size = *size_;
  std::vector<std::pair<uint32_t, std::vector<nbdring::Extent>>> replies;
  absl::Status status = client_->BlockStatusSync(length, offset, &replies);
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("source ", spec_, ": block status at offset ", offset,
                                     " (length ", length, ") failed: ", status.message()));
  }
  std::vector<Range> ranges;
  uint64_t position = offset;
  for (const auto& [id, extents] : replies) {
    if (id != context_id) continue;
    for (const nbdring::Extent& extent : extents) {
      // The last extent may run past the end of the export; what is past it does not exist.
      const uint64_t extent_length = std::min(extent.length, size - position);
      const bool zero = (extent.flags & nbd::kStateZero) != 0;
      AppendRange(&ranges, Range{position, extent_length, zero});
      position += extent_length;
      if (position == size) break;
    }
  }
  if (position == offset) {
    return absl::FailedPreconditionError(absl::StrCat("source ", spec_,
                                                      ": block status at offset ", offset,
                                                      " described no bytes of base:allocation"));
  }
  return ranges;
}

absl::StatusOr<std::vector<Range>> Endpoint::MapDirtySource(uint64_t offset, uint64_t length,
                                                            bool use_extents) const {
  const nbd::ExportInfo& info = client_->export_info();
  const uint32_t bitmap_id = info.FindMetaContext(dirty_bitmap_context_)->id;
  const nbd::MetaContext* allocation =
      use_extents ? info.FindMetaContext(kBaseAllocation) : nullptr;
  std::vector<std::pair<uint32_t, std::vector<nbdring::Extent>>> replies;
  absl::Status status = client_->BlockStatusSync(length, offset, &replies);
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("source ", spec_, ": block status at offset ", offset,
                                     " (length ", length, ") failed: ", status.message()));
  }
  std::vector<nbdring::Extent> bitmap_extents;
  std::vector<nbdring::Extent> allocation_extents;
  for (const auto& [id, extents] : replies) {
    std::vector<nbdring::Extent>* into = nullptr;
    if (id == bitmap_id) into = &bitmap_extents;
    if (allocation != nullptr && id == allocation->id) into = &allocation_extents;
    if (into != nullptr) into->insert(into->end(), extents.begin(), extents.end());
  }
  std::vector<Range> ranges = CombineDirtyExtents(
      offset, *size_, bitmap_extents,
      allocation != nullptr
          ? std::optional<absl::Span<const nbdring::Extent>>(allocation_extents)
          : std::nullopt);
  if (ranges.empty()) {
    std::vector<std::string> contexts = {dirty_bitmap_context_};
    if (allocation != nullptr) contexts.push_back(kBaseAllocation);
    return absl::FailedPreconditionError(
        absl::StrCat("source ", spec_, ": block status at offset ", offset,
                     " described no bytes of ", absl::StrJoin(contexts, " and ")));
  }
  return ranges;
}

absl::StatusOr<std::vector<Range>> Endpoint::MapFileSource(uint64_t offset,
                                                           uint64_t length) const {
  const uint64_t end = std::min(*size_, offset + length);
  std::vector<Range> ranges;
  uint64_t position = offset;
  while (position < end) {
    const off_t data = lseek(fd_, static_cast<off_t>(position), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) {  // only a hole remains
        AppendRange(&ranges, Range{position, end - position, true});
        break;
      }
      if (errno == EINVAL) {  // no SEEK_DATA on this file system: everything is data
        AppendRange(&ranges, Range{position, end - position, false});
        break;
      }
      return ErrnoError(
          absl::StrCat("lseek(SEEK_DATA) on source ", spec_, " at offset ", position), errno);
    }
    const uint64_t data_start = std::min<uint64_t>(static_cast<uint64_t>(data), end);
    AppendRange(&ranges, Range{position, data_start - position, true});
    if (data_start == end) break;
    const off_t hole = lseek(fd_, data, SEEK_HOLE);
    if (hole < 0) {
      return ErrnoError(
          absl::StrCat("lseek(SEEK_HOLE) on source ", spec_, " at offset ", data_start), errno);
    }
    const uint64_t data_end = std::min<uint64_t>(static_cast<uint64_t>(hole), end);
    AppendRange(&ranges, Range{data_start, data_end - data_start, false});
    position = data_end;
  }
  return ranges;
}

absl::Status Endpoint::PrepareDestination(std::optional<uint64_t> source_size) {
  if (!regular_file_) return absl::OkStatus();
  // Emptying first turns every old byte into a hole: what the copy skips then reads as zero.
  if (ftruncate(fd_, 0) != 0) {
    return ErrnoError(absl::StrCat("cannot truncate destination ", spec_), errno);
  }
  if (source_size.has_value() && ftruncate(fd_, static_cast<off_t>(*source_size)) != 0) {
    return ErrnoError(absl::StrCat("cannot size destination ", spec_, " to ", *source_size,
                                   " bytes"),
                      errno);
  }
  return absl::OkStatus();
}

absl::Status Endpoint::Flush() {
  switch (kind_) {
    case EndpointKind::kNbd: {
      if (!client_->export_info().can_flush()) return absl::OkStatus();
      absl::Status status = client_->FlushSync();
      if (!status.ok()) {
        return absl::Status(status.code(), absl::StrCat("flushing destination ", spec_,
                                                        " failed: ", status.message()));
      }
      return absl::OkStatus();
    }
    case EndpointKind::kFile:
    case EndpointKind::kStream:
      // A pipe or terminal cannot be synced (EINVAL); that is not a failure to keep data.
      if (fdatasync(fd_) != 0 && errno != EINVAL && errno != EROFS) {
        return ErrnoError(absl::StrCat("flushing destination ", spec_, " failed"), errno);
      }
      return absl::OkStatus();
    case EndpointKind::kNull:
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status Endpoint::Close() {
  if (client_ != nullptr) {
    absl::Status status = client_->Close();
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("closing ", SideName(side_), " ", spec_,
                                                      ": ", status.message()));
    }
  }
  if (owns_fd_ && fd_ >= 0) {
    const int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0) {
      return ErrnoError(absl::StrCat("closing ", SideName(side_), " ", spec_), errno);
    }
  }
  return absl::OkStatus();
}

}  // namespace nbdcopy
