// Multi-conn with meta contexts: the spec lets a server assign context ids per connection.
// Each connection must parse replies with the ids IT negotiated, and on_extents must name a
// context the same way whichever connection carried the request (the id in
// Client::export_info()). Connection 1's ids used to be applied to every connection: ids a
// later connection did not know broke it, and swapped ids silently reported one context's
// extents as the other's — a corrupt incremental backup.
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nbd/wire.h"
#include "nbdring/client.h"
#include "tests/testing/completion_tracker.h"
#include "tests/testing/scripted_server.h"

namespace nbdring {
namespace {

using ::nbd::testing::Action;
using ::nbd::testing::Custom;
using ::nbd::testing::ExpectClientFlags;
using ::nbd::testing::ExpectDisconnect;
using ::nbd::testing::ExpectRequest;
using ::nbd::testing::Greet;
using ::nbd::testing::HandleOptionsUntilGo;
using ::nbd::testing::ReplyBlockStatus;
using ::nbd::testing::ScriptedConnection;
using ::nbd::testing::ScriptedExport;
using ::nbd::testing::ScriptedServer;
using ::nbdring::testing::CompletionTracker;

constexpr int kConnections = 4;
constexpr char kAllocation[] = "base:allocation";
constexpr char kBitmap[] = "qemu:dirty-bitmap:backup";
// Extent flags that say which context an extent list came from.
constexpr uint64_t kAllocationFlags = 0x3;  // hole|zero
constexpr uint64_t kBitmapFlags = 0x1;      // dirty
constexpr uint32_t kLength = 1 << 20;

// Per connection: the ids of base:allocation and of the bitmap. Connection 2 swaps
// connection 1's, connection 3 uses ids connection 1 never had.
constexpr uint32_t kAllocationIds[kConnections] = {1, 2, 17, 2};
constexpr uint32_t kBitmapIds[kConnections] = {2, 1, 42, 1};

// Every connection's script replies only once all of them have their request, so the client
// cannot route two requests to one connection.
class Barrier {
 public:
  absl::Status ArriveAndWait() {
    std::unique_lock<std::mutex> lock(mutex_);
    ++arrived_;
    changed_.notify_all();
    if (!changed_.wait_for(lock, std::chrono::seconds(10), [&] { return arrived_ >= kConnections; })) {
      return absl::DeadlineExceededError("not every connection got a request");
    }
    return absl::OkStatus();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
};

struct StatusRequest : Operation {
  std::mutex mutex;
  std::vector<std::pair<uint32_t, uint64_t>> seen;  // (context id, flags of first extent)
};

void OnExtents(Operation* operation, uint32_t context_id, absl::Span<const Extent> extents) {
  auto* request = static_cast<StatusRequest*>(operation);
  std::lock_guard<std::mutex> lock(request->mutex);
  request->seen.emplace_back(context_id, extents.empty() ? ~uint64_t{0} : extents[0].flags);
}

TEST(MetaContextIdsTest, EachConnectionMapsItsOwnIds) {
  Barrier all_requests_arrived;
  ScriptedServer server(kConnections, [&](int index) {
    ScriptedExport export_config;
    export_config.size = kLength;
    export_config.transmission_flags |= nbd::kFlagCanMultiConn;
    export_config.meta_contexts = {{kAllocationIds[index], kAllocation},
                                   {kBitmapIds[index], kBitmap}};
    return std::vector<Action>{
        Greet(),
        ExpectClientFlags(),
        HandleOptionsUntilGo(export_config),
        ExpectRequest(nbd::Command::kBlockStatus),
        Custom("wait for the other connections' requests",
               [&](ScriptedConnection&) { return all_requests_arrived.ArriveAndWait(); }),
        ReplyBlockStatus(0, kBitmapIds[index], {{kLength, kBitmapFlags}}, false),
        ReplyBlockStatus(0, kAllocationIds[index], {{kLength, kAllocationFlags}}, true),
        ExpectDisconnect(),
    };
  });
  ClientOptions options;
  options.uri = server.uri();
  options.connections = kConnections;
  options.meta_contexts = {kAllocation, kBitmap};
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_EQ((*client)->connections(), kConnections);
  const nbd::ExportInfo& info = (*client)->export_info();
  ASSERT_NE(info.FindMetaContext(kAllocation), nullptr);
  ASSERT_NE(info.FindMetaContext(kBitmap), nullptr);
  const uint32_t allocation_id = info.FindMetaContext(kAllocation)->id;
  const uint32_t bitmap_id = info.FindMetaContext(kBitmap)->id;

  CompletionTracker tracker;
  std::vector<StatusRequest> requests(kConnections);
  for (StatusRequest& request : requests) {
    request.command = Command::kBlockStatus;
    request.length = kLength;
    request.on_extents = &OnExtents;
    tracker.Track(&request);
  }
  for (StatusRequest& request : requests) tracker.Submit(**client, &request);
  ASSERT_TRUE(tracker.WaitForAll(absl::Seconds(20)));
  EXPECT_TRUE(tracker.ExactlyOnce());
  for (int i = 0; i < kConnections; ++i) {
    EXPECT_TRUE(tracker.status(&requests[i]).ok()) << "request " << i << ": "
                                                   << tracker.status(&requests[i]);
    std::lock_guard<std::mutex> lock(requests[i].mutex);
    ASSERT_EQ(requests[i].seen.size(), 2u) << "request " << i;
    for (const auto& [context_id, flags] : requests[i].seen) {
      ASSERT_TRUE(context_id == allocation_id || context_id == bitmap_id)
          << "request " << i << ": context id " << context_id << " is not in export_info()";
      EXPECT_EQ(flags, context_id == allocation_id ? kAllocationFlags : kBitmapFlags)
          << "request " << i << ": extents of one context reported under the other's id "
          << context_id;
    }
  }
  std::vector<ClientStats> per_connection = (*client)->connection_stats();
  for (int i = 0; i < kConnections; ++i) EXPECT_EQ(per_connection[i].requests, 1u) << i;
  EXPECT_TRUE((*client)->Close().ok());
  EXPECT_TRUE(server.Wait().ok()) << server.Wait();
}

}  // namespace
}  // namespace nbdring
