#include "tests/fuzz/capture/client_session.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"

namespace nbdring::fuzzing {
namespace {

constexpr uint64_t kKiB = 1024;

struct PlannedRequest {
  Command command;
  uint64_t offset;
  uint64_t length;
};

// Submitted in this order. At most eight, so that a whole session's replies also make a seed
// for //tests/fuzz:reply_parser_fuzzer (which tracks up to eight requests).
constexpr PlannedRequest kPlan[] = {
    {Command::kRead, 0, 512},
    {Command::kWrite, 512, 512},
    // At least ClientOptions::direct_receive_bytes: the payload is received into the buffer.
    {Command::kRead, 0, 32 * kKiB},
    {Command::kBlockStatus, 0, 64 * kKiB},
    {Command::kFlush, 0, 0},
    {Command::kWriteZeroes, 4 * kKiB, 4 * kKiB},
    {Command::kTrim, 8 * kKiB, 4 * kKiB},
    {Command::kRead, 4 * kKiB, 4 * kKiB},
};

}  // namespace

ClientOptions SessionOptions(const std::string& uri) {
  ClientOptions options;
  options.uri = uri;
  options.connections = 1;
  options.threads = 1;
  options.meta_contexts = {"base:allocation"};
  options.structured_replies = true;
  options.extended_headers = false;
  options.connect_timeout = absl::Seconds(1);
  options.request_timeout = absl::Seconds(1);
  return options;
}

nbd::HandshakeOptions SessionHandshakeOptions() {
  const ClientOptions options = SessionOptions("");
  nbd::HandshakeOptions handshake;
  handshake.goal = nbd::HandshakeOptions::Goal::kTransmission;
  handshake.export_name = "";
  handshake.structured_replies = options.structured_replies;
  handshake.extended_headers = options.extended_headers;
  handshake.meta_contexts = options.meta_contexts;
  handshake.request_block_size = true;
  return handshake;
}

std::optional<HandshakeSplit> SplitHandshake(absl::Span<const uint8_t> server_stream) {
  nbd::Handshake handshake(SessionHandshakeOptions());
  HandshakeSplit split;
  while (true) {
    split.client_bytes += handshake.output().size();
    handshake.ConsumeOutput(handshake.output().size());
    if (handshake.state() == nbd::Handshake::State::kDone) break;
    if (handshake.state() != nbd::Handshake::State::kRunning) return std::nullopt;
    const absl::Span<const uint8_t> rest = server_stream.subspan(split.server_bytes);
    if (rest.empty()) return std::nullopt;
    const absl::StatusOr<size_t> consumed = handshake.Feed(rest);
    if (!consumed.ok()) return std::nullopt;
    split.server_bytes += *consumed;
  }
  split.info = handshake.export_info();
  return split;
}

struct SessionRequests::Request {
  Operation operation;
  std::vector<uint8_t> buffer;
  std::atomic<int> calls{0};
  absl::Status status;  // guarded by the session's mutex_
  SessionRequests* session = nullptr;
};

SessionRequests::SessionRequests() = default;
SessionRequests::~SessionRequests() = default;

void SessionRequests::BreakPromise(std::string what) {
  std::lock_guard lock(mutex_);
  if (broken_promise_.empty()) broken_promise_ = std::move(what);
}

void SessionRequests::OnComplete(Operation* operation, const absl::Status& status) {
  auto* request = static_cast<Request*>(operation->user_data);
  SessionRequests& session = *request->session;
  if (request->calls.fetch_add(1, std::memory_order_acq_rel) != 0) {
    session.BreakPromise(absl::StrCat("the callback of ", nbd::CommandName(operation->command),
                                      " at offset ", operation->offset, " ran twice"));
    return;
  }
  std::lock_guard lock(session.mutex_);
  request->status = status;
  ++session.completed_;
  session.changed_.notify_all();
}

void SessionRequests::OnHole(Operation* operation, uint64_t offset_in_request, uint64_t length) {
  auto* request = static_cast<Request*>(operation->user_data);
  if (operation->command != Command::kRead || length == 0 ||
      offset_in_request > operation->length || length > operation->length - offset_in_request) {
    request->session->BreakPromise(
        absl::StrCat("hole of ", length, " bytes at ", offset_in_request, " reported for ",
                     nbd::CommandName(operation->command), " of length ", operation->length));
  }
}

void SessionRequests::OnExtents(Operation* operation, uint32_t context_id,
                                absl::Span<const Extent> extents) {
  auto* request = static_cast<Request*>(operation->user_data);
  SessionRequests& session = *request->session;
  bool negotiated = false;
  for (const nbd::MetaContext& context : session.info_.meta_contexts) {
    negotiated = negotiated || context.id == context_id;
  }
  if (operation->command != Command::kBlockStatus || extents.empty() || !negotiated) {
    session.BreakPromise(absl::StrCat(extents.size(), " extents for context ", context_id,
                                      " reported for ", nbd::CommandName(operation->command)));
  }
}

absl::Status SessionRequests::Run(Client& client, absl::FunctionRef<void()> all_sent,
                                  absl::Duration timeout) {
  info_ = client.export_info();
  const absl::Time deadline = absl::Now() + timeout;
  const uint64_t sent_before = client.stats().wire_requests;
  uint64_t accepted = 0;
  for (const PlannedRequest& planned : kPlan) {
    auto request = std::make_unique<Request>();
    request->session = this;
    Operation& operation = request->operation;
    operation.command = planned.command;
    operation.offset = planned.offset;
    operation.length = planned.length;
    if (planned.command == Command::kRead || planned.command == Command::kWrite) {
      request->buffer.assign(planned.length, 0xa5);
      operation.buffer = request->buffer.data();
    }
    operation.user_data = request.get();
    operation.on_complete = &SessionRequests::OnComplete;
    operation.on_hole = &SessionRequests::OnHole;
    operation.on_extents = &SessionRequests::OnExtents;
    if (client.Validate(operation).ok()) ++accepted;
    requests_.push_back(std::move(request));
  }
  for (const std::unique_ptr<Request>& request : requests_) client.Submit(&request->operation);

  // The caller may hold the replies back until every request is out, so that none of them
  // arrives for a cookie the client has not handed out yet.
  while (client.stats().wire_requests - sent_before < accepted && absl::Now() < deadline) {
    {
      std::lock_guard lock(mutex_);
      if (completed_ == requests_.size()) break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  all_sent();

  std::unique_lock lock(mutex_);
  const bool all_completed = changed_.wait_for(
      lock, absl::ToChronoNanoseconds(std::max(deadline - absl::Now(), absl::ZeroDuration())),
      [&] { return completed_ == requests_.size(); });
  if (!all_completed) {
    return absl::DeadlineExceededError(absl::StrCat("only ", completed_, " of ", requests_.size(),
                                                    " callbacks ran within ",
                                                    absl::FormatDuration(timeout)));
  }
  if (!broken_promise_.empty()) return absl::InternalError(broken_promise_);
  return absl::OkStatus();
}

absl::Status SessionRequests::Check() const {
  std::lock_guard lock(mutex_);
  if (!broken_promise_.empty()) return absl::InternalError(broken_promise_);
  for (const std::unique_ptr<Request>& request : requests_) {
    const int calls = request->calls.load(std::memory_order_acquire);
    if (calls != 1) {
      return absl::InternalError(
          absl::StrCat("the callback of ", nbd::CommandName(request->operation.command),
                       " at offset ", request->operation.offset, " ran ", calls, " times"));
    }
  }
  return absl::OkStatus();
}

std::string SessionRequests::Summary() const {
  std::lock_guard lock(mutex_);
  std::string summary;
  for (const std::unique_ptr<Request>& request : requests_) {
    absl::StrAppend(&summary, nbd::CommandName(request->operation.command), " offset ",
                    request->operation.offset, " length ", request->operation.length, ": ",
                    request->status.ToString(), "\n");
  }
  return summary;
}

}  // namespace nbdring::fuzzing
