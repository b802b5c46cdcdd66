// A minimal embedder: links libnbdring.a with plain g++, outside Bazel. Writes 1 MiB with
// the async API, reads it back with the sync API, and checks the bytes.
#include <cstdio>
#include <cstring>
#include <future>
#include <vector>

#include "nbdring/client.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s NBD-URI\n", argv[0]);
    return 2;
  }
  nbdring::ClientOptions options;
  options.uri = argv[1];
  auto client = nbdring::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  std::vector<unsigned char> written(1 << 20), read(1 << 20);
  for (size_t i = 0; i < written.size(); ++i) written[i] = static_cast<unsigned char>(i * 31 + 7);
  std::promise<absl::Status> done;
  (*client)->Pwrite(written.data(), written.size(), 0,
                    [&done](absl::Status status) { done.set_value(status); });
  absl::Status status = done.get_future().get();
  if (!status.ok()) {
    std::fprintf(stderr, "write: %s\n", status.ToString().c_str());
    return 1;
  }
  status = (*client)->PreadSync(read.data(), read.size(), 0);
  if (!status.ok()) {
    std::fprintf(stderr, "read: %s\n", status.ToString().c_str());
    return 1;
  }
  if (std::memcmp(written.data(), read.data(), read.size()) != 0) {
    std::fprintf(stderr, "read back different bytes\n");
    return 1;
  }
  std::printf("embedded client OK: %llu-byte export, 1 MiB written and verified\n",
              static_cast<unsigned long long>((*client)->size()));
  return (*client)->Close().ok() ? 0 : 1;
}
