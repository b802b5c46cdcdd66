// tools/copy/endpoint.h — one side of a copy: an NBD export, a local file or block device, a
// stream (stdin/stdout, "-"), or the null sink ("null:").
//
// Opening an endpoint connects (NBD) or opens (file, stream) it and learns its size, but writes
// nothing: a destination file is only truncated later, by PrepareDestination(), once the copy
// is known to be possible. MapSource() says which parts of a window of a source read as zeroes
// (NBD base:allocation, or SEEK_DATA/SEEK_HOLE for files) so the copier can avoid reading them.
#ifndef NBDRING_TOOLS_COPY_ENDPOINT_H_
#define NBDRING_TOOLS_COPY_ENDPOINT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nbdring/client.h"
#include "tools/copy/copy_plan.h"

namespace nbdcopy {

enum class EndpointKind {
  kNbd,     // nbd://, nbd+unix://, ... served by an nbdring::Client
  kFile,    // a local regular file or block device: positioned I/O, any order
  kStream,  // "-": stdin as a source, stdout as a destination; strictly in order
  kNull,    // "null:": a destination that discards what it is given
};

enum class Side { kSource, kDestination };
const char* SideName(Side side);  // "source" / "destination"

// How to open an endpoint; mostly about NBD connections, hence the name.
struct NbdOptions {
  int connections = 4;
  int threads = 1;
  uint32_t requests_per_connection = 16;
  bool want_extents = true;  // negotiate base:allocation (source only)
  absl::Duration request_timeout = absl::ZeroDuration();
  // Reconnect attempts per lost connection (the requests in flight are sent again once
  // back); 0: a lost connection fails the copy.
  int retries = 0;
  // Source only, for incremental copies: the dirty bitmap (qemu:dirty-bitmap:NAME) that
  // MapSource() follows. Opening fails when the server does not offer it.
  std::string dirty_bitmap;
  // Destination files only: create a missing one. Off for incremental copies, whose
  // destination must already hold the previous copy.
  bool create_file = true;
};

class Endpoint {
 public:
  // `spec` is an NBD URI, "-", "null:" (destination only) or a path.
  static absl::StatusOr<std::unique_ptr<Endpoint>> Open(const std::string& spec, Side side,
                                                        const NbdOptions& nbd_options);
  ~Endpoint();

  EndpointKind kind() const { return kind_; }
  Side side() const { return side_; }
  const std::string& spec() const { return spec_; }
  // Bytes in the endpoint; absent for streams and the null sink.
  std::optional<uint64_t> size() const { return size_; }
  nbdring::Client* client() const { return client_.get(); }  // kNbd only
  int fd() const { return fd_; }                             // kFile and kStream only
  // A regular file (not a block device): it can be truncated, and holes read as zeroes.
  bool is_regular_file() const { return regular_file_; }
  // The largest request the endpoint takes in one go (NBD maximum block size), if limited.
  std::optional<uint64_t> maximum_request() const;
  // What every request's offset and length must be a multiple of (NBD minimum block size);
  // 1 for files and streams.
  uint64_t minimum_request() const;

  // Source only: ranges in order from `offset` (< size), adjacent ones differing in `zero`,
  // describing at least one byte and at most up to the end of the source. They usually end at
  // `offset + length`, but a server may describe less than asked (the caller asks again from
  // where they end) or more. Without extent information (or with `use_extents` false) the
  // rest of the source is one data range. With a dirty bitmap (NbdOptions::dirty_bitmap) the
  // bytes it does not mark dirty are unchanged ranges, whatever `use_extents` says.
  absl::StatusOr<std::vector<Range>> MapSource(uint64_t offset, uint64_t length,
                                               bool use_extents) const;

  // Destination only, called once the copy is known to fit: a regular file is emptied and
  // sized to `source_size` (when known), so that every byte not written reads as zero.
  absl::Status PrepareDestination(std::optional<uint64_t> source_size);
  // Makes what was written durable: NBD_CMD_FLUSH, fdatasync.
  absl::Status Flush();
  // Disconnects / closes, reporting a failure that could mean lost data.
  absl::Status Close();

 private:
  Endpoint() = default;
  absl::StatusOr<std::vector<Range>> MapNbdSource(uint64_t offset, uint64_t length) const;
  absl::StatusOr<std::vector<Range>> MapFileSource(uint64_t offset, uint64_t length) const;
  absl::StatusOr<std::vector<Range>> MapDirtySource(uint64_t offset, uint64_t length,
                                                    bool use_extents) const;

  EndpointKind kind_ = EndpointKind::kNull;
  Side side_ = Side::kSource;
  std::string spec_;
  // qemu:dirty-bitmap:NAME for an incremental source; empty for full copies.
  std::string dirty_bitmap_context_;
  std::optional<uint64_t> size_;
  std::unique_ptr<nbdring::Client> client_;
  int fd_ = -1;
  bool owns_fd_ = false;
  bool regular_file_ = false;
};

}  // namespace nbdcopy

#endif  // NBDRING_TOOLS_COPY_ENDPOINT_H_
