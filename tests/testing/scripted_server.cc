#include "tests/testing/scripted_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nbd/errors.h"
#include "tests/testing/byte_builder.h"

namespace nbd::testing {
namespace {

// Caps on what a client can make the scripted server allocate; far above anything a test sends.
constexpr uint32_t kMaxOptionDataBytes = 64 * 1024;
constexpr uint64_t kMaxWritePayloadBytes = 64u << 20;

absl::Status ErrnoError(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

std::string OptionDisplayName(uint32_t option) {
  return absl::StrCat(OptionName(static_cast<Option>(option)), " (", option, ")");
}

std::string CommandDisplayName(Command command) {
  return absl::StrCat(CommandName(command), " (", static_cast<uint16_t>(command), ")");
}

// Reads big-endian fields from an option's data, remembering whether any read ran past the end.
class FieldReader {
 public:
  explicit FieldReader(absl::Span<const uint8_t> data) : data_(data) {}
  uint16_t U16() { return Take(2) ? Load16(data_.data() + position_ - 2) : 0; }
  uint32_t U32() { return Take(4) ? Load32(data_.data() + position_ - 4) : 0; }
  std::string String(size_t length) {
    if (!Take(length)) return "";
    return std::string(reinterpret_cast<const char*>(data_.data() + position_ - length), length);
  }
  // True when every field was present and nothing is left over.
  bool complete() const { return !overrun_ && position_ == data_.size(); }

 private:
  bool Take(size_t size) {
    if (overrun_ || data_.size() - position_ < size) {
      overrun_ = true;
      return false;
    }
    position_ += size;
    return true;
  }
  absl::Span<const uint8_t> data_;
  size_t position_ = 0;
  bool overrun_ = false;
};

absl::StatusOr<RecordedOption> ReadOption(ScriptedConnection& connection) {
  std::vector<uint8_t> header;
  absl::Status status = connection.Receive(kOptionHeaderSize, &header, "option header");
  if (!status.ok()) return status;
  uint64_t magic = Load64(header.data());
  if (magic != kIHaveOpt) {
    return absl::InvalidArgumentError(
        absl::StrFormat("option magic is 0x%016x, not IHAVEOPT (0x%016x)", magic, kIHaveOpt));
  }
  RecordedOption option;
  option.option = Load32(header.data() + 8);
  uint32_t length = Load32(header.data() + 12);
  if (length > kMaxOptionDataBytes) {
    return absl::InvalidArgumentError(absl::StrCat(OptionDisplayName(option.option), " carries ",
                                                   length, " bytes of data; the script accepts ",
                                                   kMaxOptionDataBytes, " at most"));
  }
  status = connection.Receive(length, &option.data,
                              absl::StrCat("data of ", OptionDisplayName(option.option)));
  if (!status.ok()) return status;
  connection.options().push_back(option);
  return option;
}

absl::Status SendOptionReplyTo(ScriptedConnection& connection, uint32_t option, OptionReply reply,
                               absl::Span<const uint8_t> payload = {}) {
  return connection.Send(OptionReplyBytes(option, static_cast<uint32_t>(reply), payload));
}

// NBD_OPT_GO / NBD_OPT_INFO: u32 name length, name, u16 request count, u16 requests.
absl::Status AnswerExportQuery(ScriptedConnection& connection, const RecordedOption& option,
                               const ScriptedExport& export_config) {
  FieldReader reader(option.data);
  reader.String(reader.U32());
  uint16_t request_count = reader.U16();
  bool wants_block_size = false;
  for (uint16_t i = 0; i < request_count; ++i) {
    if (reader.U16() == static_cast<uint16_t>(InfoType::kBlockSize)) wants_block_size = true;
  }
  if (!reader.complete()) {
    return absl::InvalidArgumentError(absl::StrCat("malformed data in ",
                                                   OptionDisplayName(option.option), " (",
                                                   option.data.size(), " bytes)"));
  }
  ByteBuilder export_info;
  export_info.U16(static_cast<uint16_t>(InfoType::kExport))
      .U64(export_config.size)
      .U16(export_config.transmission_flags);
  absl::Status status =
      SendOptionReplyTo(connection, option.option, OptionReply::kInfo, export_info.bytes());
  if (!status.ok()) return status;
  if (wants_block_size && export_config.block_size.advertised) {
    ByteBuilder block_size;
    block_size.U16(static_cast<uint16_t>(InfoType::kBlockSize))
        .U32(export_config.block_size.minimum)
        .U32(export_config.block_size.preferred)
        .U32(export_config.block_size.maximum);
    status = SendOptionReplyTo(connection, option.option, OptionReply::kInfo, block_size.bytes());
    if (!status.ok()) return status;
  }
  return SendOptionReplyTo(connection, option.option, OptionReply::kAck);
}

// NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT: u32 name length, name, u32 query count,
// then (u32 length, query) per query.
absl::Status AnswerMetaContextQuery(ScriptedConnection& connection, const RecordedOption& option,
                                    const ScriptedExport& export_config) {
  bool is_set = option.option == static_cast<uint32_t>(Option::kSetMetaContext);
  if (is_set && connection.reply_mode() == ReplyMode::kSimple) {
    // proto.md: SET_META_CONTEXT before structured replies are negotiated is invalid.
    return SendOptionReplyTo(connection, option.option, OptionReply::kErrInvalid);
  }
  FieldReader reader(option.data);
  reader.String(reader.U32());
  uint32_t query_count = reader.U32();
  std::vector<std::string> queries;
  for (uint32_t i = 0; i < query_count && i < 1024; ++i)
    queries.push_back(reader.String(reader.U32()));
  if (!reader.complete()) {
    return absl::InvalidArgumentError(absl::StrCat("malformed data in ",
                                                   OptionDisplayName(option.option), " (",
                                                   option.data.size(), " bytes)"));
  }
  for (const MetaContext& context : export_config.meta_contexts) {
    bool selected = queries.empty() && !is_set;  // an empty LIST query lists everything
    for (const std::string& query : queries) selected = selected || query == context.name;
    if (!selected) continue;
    ByteBuilder reply;
    reply.U32(context.id).Str(context.name);
    absl::Status status =
        SendOptionReplyTo(connection, option.option, OptionReply::kMetaContext, reply.bytes());
    if (!status.ok()) return status;
  }
  return SendOptionReplyTo(connection, option.option, OptionReply::kAck);
}

// Answers options until `stop_at` arrives (left unanswered) or, when `stop_at` is empty, until
// the client enters the transmission phase.
absl::Status HandleOptions(ScriptedConnection& connection, const ScriptedExport& export_config,
                           std::optional<Option> stop_at) {
  while (true) {
    absl::StatusOr<RecordedOption> option = ReadOption(connection);
    if (!option.ok()) return option.status();
    if (stop_at.has_value() && option->option == static_cast<uint32_t>(*stop_at)) {
      return absl::OkStatus();
    }
    auto entering_transmission = [&]() -> absl::Status {
      if (!stop_at.has_value()) return absl::OkStatus();
      return absl::FailedPreconditionError(absl::StrCat(
          "client entered the transmission phase with ", OptionDisplayName(option->option),
          " before sending ", OptionName(*stop_at)));
    };
    absl::Status status;
    switch (static_cast<Option>(option->option)) {
      case Option::kExportName: {
        ByteBuilder reply;
        reply.U64(export_config.size).U16(export_config.transmission_flags);
        if (!connection.no_zeroes()) reply.Zeroes(kExportNameReplyPadding);
        status = connection.Send(reply.bytes());
        if (!status.ok()) return status;
        return entering_transmission();
      }
      case Option::kGo:
        status = AnswerExportQuery(connection, *option, export_config);
        if (!status.ok()) return status;
        return entering_transmission();
      case Option::kInfo:
        status = AnswerExportQuery(connection, *option, export_config);
        break;
      case Option::kStructuredReply:
        if (!option->data.empty()) {
          status = SendOptionReplyTo(connection, option->option, OptionReply::kErrInvalid);
        } else if (export_config.structured_replies) {
          connection.set_reply_mode(ReplyMode::kStructured);
          status = SendOptionReplyTo(connection, option->option, OptionReply::kAck);
        } else {
          status = SendOptionReplyTo(connection, option->option, OptionReply::kErrUnsup);
        }
        break;
      case Option::kSetMetaContext:
      case Option::kListMetaContext:
        status = AnswerMetaContextQuery(connection, *option, export_config);
        break;
      case Option::kList: {
        ByteBuilder listing;
        listing.U32(0);  // the default export, named ""
        status =
            SendOptionReplyTo(connection, option->option, OptionReply::kServer, listing.bytes());
        if (status.ok()) status = SendOptionReplyTo(connection, option->option, OptionReply::kAck);
        break;
      }
      case Option::kAbort:
        // proto.md: the server SHOULD acknowledge NBD_OPT_ABORT; the client may already be gone.
        SendOptionReplyTo(connection, option->option, OptionReply::kAck).IgnoreError();
        return absl::FailedPreconditionError("client sent NBD_OPT_ABORT during negotiation");
      default:
        status = SendOptionReplyTo(connection, option->option, OptionReply::kErrUnsup);
        break;
    }
    if (!status.ok()) return status;
  }
}

absl::Status ReceivePayload(ScriptedConnection& connection, RecordedRequest* request) {
  if (request->header.length > kMaxWritePayloadBytes) {
    return absl::InvalidArgumentError(absl::StrCat("NBD_CMD_WRITE of ", request->header.length,
                                                   " bytes; the script accepts ",
                                                   kMaxWritePayloadBytes, " at most"));
  }
  return connection.Receive(request->header.length, &request->payload, "payload of NBD_CMD_WRITE");
}

absl::StatusOr<size_t> ReadRequest(ScriptedConnection& connection, bool with_payload) {
  bool extended = connection.reply_mode() == ReplyMode::kExtended;
  std::vector<uint8_t> header;
  absl::Status status = connection.Receive(RequestHeaderSize(extended), &header, "request header");
  if (!status.ok()) return status;
  RecordedRequest request;
  if (!DecodeRequest(header.data(), header.size(), extended, &request.header)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("request magic is 0x%08x, not 0x%08x", Load32(header.data()),
                        extended ? kExtendedRequestMagic : kRequestMagic));
  }
  if (with_payload && request.header.command == Command::kWrite) {
    status = ReceivePayload(connection, &request);
    if (!status.ok()) return status;
  }
  connection.requests().push_back(std::move(request));
  return connection.requests().size() - 1;
}

absl::Status ExpectOneRequest(ScriptedConnection& connection, Command command,
                              bool with_payload = true) {
  absl::StatusOr<size_t> index = ReadRequest(connection, with_payload);
  if (!index.ok()) return index.status();
  Command received = connection.requests()[*index].header.command;
  if (received != command) {
    return absl::FailedPreconditionError(absl::StrCat("request ", *index, " is ",
                                                      CommandDisplayName(received), ", expected ",
                                                      CommandName(command)));
  }
  return absl::OkStatus();
}

// Runs `build` on the recorded request and sends what it returns.
Action ReplyTo(
    std::string description, size_t request_index,
    std::function<absl::StatusOr<std::vector<uint8_t>>(ScriptedConnection&, const RecordedRequest&)>
        build) {
  return Action{std::move(description),
                [request_index, build = std::move(build)](ScriptedConnection& connection) {
                  absl::StatusOr<const RecordedRequest*> request =
                      connection.request(request_index);
                  if (!request.ok()) return request.status();
                  absl::StatusOr<std::vector<uint8_t>> bytes = build(connection, **request);
                  if (!bytes.ok()) return bytes.status();
                  return connection.Send(*bytes);
                }};
}

absl::Status RequireStructured(const ScriptedConnection& connection, absl::string_view action) {
  if (connection.reply_mode() == ReplyMode::kStructured) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(action, " needs structured replies, but the connection negotiated ",
                   ReplyModeName(connection.reply_mode()), " replies"));
}

uint16_t DoneFlag(bool done) { return done ? kReplyFlagDone : 0; }

}  // namespace

// --- ScriptedConnection ------------------------------------------------------------------------

ScriptedConnection::ScriptedConnection(int fd, int stop_fd, const std::atomic<bool>* stopping,
                                       const ScriptedServerOptions& server_options)
    : fd_(fd), stop_fd_(stop_fd), stopping_(stopping), server_options_(server_options) {}

ScriptedConnection::~ScriptedConnection() { close(fd_); }

void ScriptedConnection::Shutdown() { shutdown(fd_, SHUT_RDWR); }

absl::Status ScriptedConnection::WaitReadable(absl::Time deadline, absl::Duration limit,
                                              absl::string_view what) {
  while (true) {
    if (stopping_->load()) {
      return absl::CancelledError(absl::StrCat("server stopped while waiting for ", what));
    }
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("no ", what, " from the client within ", absl::FormatDuration(limit)));
    }
    pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    int timeout_ms = static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1000));
    int ready = poll(fds, 2, timeout_ms);
    if (ready < 0 && errno != EINTR) return ErrnoError("poll");
    if (ready > 0 && fds[0].revents != 0) return absl::OkStatus();
  }
}

absl::Status ScriptedConnection::Receive(size_t size, std::vector<uint8_t>* out,
                                         absl::string_view what) {
  out->assign(size, 0);
  size_t received = 0;
  absl::Time deadline = absl::Now() + io_timeout();
  while (received < size) {
    absl::Status status = WaitReadable(deadline, io_timeout(), what);
    if (!status.ok()) return status;
    ssize_t n = recv(fd_, out->data() + received, size - received, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
      return absl::UnavailableError(absl::StrCat("client closed the connection after ", received,
                                                 " of the ", size, " bytes of the ", what));
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return ErrnoError(absl::StrCat("recv ", what));
    }
    received += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status ScriptedConnection::DrainUntilClosed(absl::Duration limit,
                                                  std::vector<uint8_t>* received) {
  absl::Time deadline = absl::Now() + limit;
  uint8_t buffer[4096];
  while (true) {
    absl::Status status = WaitReadable(deadline, limit, "close of the connection");
    if (!status.ok()) return status;
    ssize_t n = recv(fd_, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) return absl::OkStatus();
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return ErrnoError("recv while waiting for the client to close");
    }
    if (received != nullptr) received->insert(received->end(), buffer, buffer + n);
  }
}

absl::Status ScriptedConnection::Send(absl::Span<const uint8_t> bytes) {
  if (cut_) return absl::FailedPreconditionError("the script already cut the connection");
  if (cut_after_.has_value() && *cut_after_ <= bytes.size()) {
    size_t allowed = static_cast<size_t>(*cut_after_);
    cut_after_.reset();
    absl::Status status = Send(bytes.subspan(0, allowed));
    cut_ = true;
    Shutdown();
    return status;
  }
  if (cut_after_.has_value()) *cut_after_ -= bytes.size();
  size_t sent = 0;
  absl::Time deadline = absl::Now() + io_timeout();
  while (sent < bytes.size()) {
    if (stopping_->load()) return absl::CancelledError("server stopped while sending");
    size_t chunk = trickling_ ? 1 : bytes.size() - sent;
    ssize_t n = send(fd_, bytes.data() + sent, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        return absl::UnavailableError(absl::StrCat("send failed after ", sent, " of ", bytes.size(),
                                                   " bytes: ", std::strerror(errno)));
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("client did not read ", bytes.size() - sent,
                                                        " more bytes within ",
                                                        absl::FormatDuration(io_timeout())));
      }
      pollfd fds[2] = {{fd_, POLLOUT, 0}, {stop_fd_, POLLIN, 0}};
      poll(fds, 2, 100);
      continue;
    }
    sent += static_cast<size_t>(n);
    if (trickling_ && sent < bytes.size()) absl::SleepFor(trickle_delay_);
  }
  return absl::OkStatus();
}

absl::StatusOr<const RecordedRequest*> ScriptedConnection::request(size_t index) const {
  if (index >= requests_.size()) {
    return absl::FailedPreconditionError(absl::StrCat("the script replies to request ", index,
                                                      " but only ", requests_.size(),
                                                      " requests were received"));
  }
  return &requests_[index];
}

// --- ScriptedServer ----------------------------------------------------------------------------

ScriptedServer::ScriptedServer(std::vector<Action> script, ScriptedServerOptions options)
    : ScriptedServer(
          1, [&script](int) { return std::move(script); }, options) {}

ScriptedServer::ScriptedServer(
    int connections, const std::function<std::vector<Action>(int connection_index)>& script_for,
    ScriptedServerOptions options)
    : options_(options) {
  for (int i = 0; i < connections; ++i) scripts_.push_back(script_for(i));
  recorded_.resize(scripts_.size());
  absl::Status status = connections > 0
                            ? Setup()
                            : absl::InvalidArgumentError(
                                  absl::StrCat("a server for ", connections, " connections"));
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    result_ =
        absl::InternalError(absl::StrCat("scripted server set-up failed: ", status.message()));
    return;
  }
  thread_ = std::thread([this] { Run(); });
}

ScriptedServer::~ScriptedServer() {
  stopping_.store(true);
  if (stop_pipe_[1] >= 0) {
    uint8_t byte = 1;
    // The pipe stays readable from now on, so every later poll() wakes at once.
    while (write(stop_pipe_[1], &byte, 1) < 0 && errno == EINTR) {
    }
  }
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  for (int fd : stop_pipe_) {
    if (fd >= 0) close(fd);
  }
}

absl::Status ScriptedServer::Setup() {
  absl::StatusOr<std::unique_ptr<TempDir>> dir = TempDir::Create();
  if (!dir.ok()) return dir.status();
  dir_ = *std::move(dir);
  socket_path_ = dir_->File("scripted.sock");
  if (pipe2(stop_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) return ErrnoError("pipe2");
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) return ErrnoError("socket(AF_UNIX)");
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path_.size() >= sizeof(address.sun_path)) {
    return absl::InternalError(absl::StrCat("socket path too long: ", socket_path_));
  }
  std::memcpy(address.sun_path, socket_path_.c_str(), socket_path_.size() + 1);
  if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return ErrnoError(absl::StrCat("bind ", socket_path_));
  }
  if (listen(listen_fd_, static_cast<int>(scripts_.size()) + 4) != 0) return ErrnoError("listen");
  return absl::OkStatus();
}

std::string ScriptedServer::uri() const {
  return absl::StrCat("nbd+unix:///?socket=", socket_path_);
}

void ScriptedServer::Run() {
  std::vector<std::thread> scripts;
  absl::Time deadline = absl::Now() + options_.io_timeout;
  for (int i = 0; i < static_cast<int>(scripts_.size()); ++i) {
    absl::StatusOr<int> fd = Accept(deadline);
    if (!fd.ok()) {
      std::lock_guard<std::mutex> lock(mutex_);
      NoteFailureLocked(i, fd.status());
      break;
    }
    deadline = absl::Now() + options_.io_timeout;
    if (i + 1 == static_cast<int>(scripts_.size())) {
      // Every script has its connection: later connection attempts are refused, not left
      // waiting. Closed before the last script starts, so no client can see it still open.
      close(listen_fd_);
      listen_fd_ = -1;
    }
    scripts.emplace_back([this, i, fd = *fd] { RunScript(i, fd); });
  }
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
  }
  for (std::thread& script : scripts) script.join();
  std::lock_guard<std::mutex> lock(mutex_);
  finished_ = true;
  finished_changed_.notify_all();
}

absl::StatusOr<int> ScriptedServer::Accept(absl::Time deadline) {
  while (true) {
    if (stopping_.load()) return absl::CancelledError("server stopped before a client connected");
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("no client connected within ", absl::FormatDuration(options_.io_timeout)));
    }
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    poll(fds, 2, static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1000)));
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) return fd;
    if (errno != EAGAIN && errno != EINTR) return ErrnoError("accept4");
  }
}

void ScriptedServer::RunScript(int connection_index, int fd) {
  const std::vector<Action>& script = scripts_[connection_index];
  ScriptedConnection connection(fd, stop_pipe_[0], &stopping_, options_);
  absl::Status result;
  for (size_t i = 0; i < script.size(); ++i) {
    absl::Status status = script[i].run(connection);
    if (!status.ok()) {
      result = absl::Status(status.code(), absl::StrCat("action ", i, " ", script[i].description,
                                                        ": ", status.message()));
      break;
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  recorded_[connection_index] = {connection.requests(), connection.options()};
  if (!result.ok()) NoteFailureLocked(connection_index, result);
}

void ScriptedServer::NoteFailureLocked(int connection_index, const absl::Status& status) {
  if (!result_.ok()) return;
  result_ = scripts_.size() == 1
                ? status
                : absl::Status(status.code(), absl::StrCat("connection ", connection_index, ": ",
                                                           status.message()));
}

absl::Status ScriptedServer::Wait(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  bool finished = finished_changed_.wait_for(lock, absl::ToChronoMilliseconds(timeout),
                                             [this] { return finished_; });
  if (!finished) {
    return absl::DeadlineExceededError(
        absl::StrCat("script still running after ", absl::FormatDuration(timeout)));
  }
  return result_;
}

std::vector<RecordedRequest> ScriptedServer::requests(int connection_index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (connection_index < 0 || connection_index >= static_cast<int>(recorded_.size())) return {};
  return recorded_[connection_index].requests;
}

std::vector<RecordedOption> ScriptedServer::options(int connection_index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (connection_index < 0 || connection_index >= static_cast<int>(recorded_.size())) return {};
  return recorded_[connection_index].options;
}

// --- Byte builders -------------------------------------------------------------------------------

std::vector<uint8_t> GreetingBytes(uint16_t handshake_flags) {
  return ByteBuilder().U64(kInitPasswd).U64(kIHaveOpt).U16(handshake_flags).bytes();
}

std::vector<uint8_t> OptionReplyBytes(uint32_t option, uint32_t reply_type,
                                      absl::Span<const uint8_t> payload) {
  ByteBuilder bytes;
  bytes.U64(kOptionReplyMagic)
      .U32(option)
      .U32(reply_type)
      .U32(static_cast<uint32_t>(payload.size()));
  std::vector<uint8_t> result = bytes.bytes();
  result.insert(result.end(), payload.begin(), payload.end());
  return result;
}

std::vector<uint8_t> SimpleReplyBytes(uint32_t error, uint64_t cookie,
                                      absl::Span<const uint8_t> payload) {
  std::vector<uint8_t> result = ByteBuilder().U32(kSimpleReplyMagic).U32(error).U64(cookie).bytes();
  result.insert(result.end(), payload.begin(), payload.end());
  return result;
}

std::vector<uint8_t> ChunkHeaderBytes(uint16_t flags, uint16_t type, uint64_t cookie,
                                      uint32_t length) {
  return ByteBuilder()
      .U32(kStructuredReplyMagic)
      .U16(flags)
      .U16(type)
      .U64(cookie)
      .U32(length)
      .bytes();
}

std::vector<uint8_t> ChunkBytes(uint16_t flags, uint16_t type, uint64_t cookie,
                                absl::Span<const uint8_t> payload) {
  std::vector<uint8_t> result =
      ChunkHeaderBytes(flags, type, cookie, static_cast<uint32_t>(payload.size()));
  result.insert(result.end(), payload.begin(), payload.end());
  return result;
}

std::vector<uint8_t> ErrorChunkPayload(uint32_t error, absl::string_view message,
                                       std::optional<uint64_t> offset) {
  ByteBuilder payload;
  payload.U32(error).U16(static_cast<uint16_t>(message.size())).Str(message);
  if (offset.has_value()) payload.U64(*offset);
  return payload.bytes();
}

uint8_t PatternByte(uint64_t export_offset) {
  // 251 is prime, so the pattern does not repeat at any power-of-two stride.
  return static_cast<uint8_t>(export_offset % 251 + 1);
}

std::vector<uint8_t> PatternBytes(uint64_t export_offset, size_t length) {
  std::vector<uint8_t> bytes(length);
  for (size_t i = 0; i < length; ++i) bytes[i] = PatternByte(export_offset + i);
  return bytes;
}

// --- Handshake actions ---------------------------------------------------------------------------

Action Greet(uint16_t handshake_flags) {
  return Action{absl::StrFormat("Greet(flags 0x%04x)", handshake_flags),
                [handshake_flags](ScriptedConnection& connection) {
                  return connection.Send(GreetingBytes(handshake_flags));
                }};
}

Action ExpectClientFlags(std::optional<uint32_t> expected) {
  return Action{"ExpectClientFlags", [expected](ScriptedConnection& connection) {
                  std::vector<uint8_t> bytes;
                  absl::Status status = connection.Receive(4, &bytes, "client flags");
                  if (!status.ok()) return status;
                  uint32_t flags = Load32(bytes.data());
                  if (expected.has_value() && flags != *expected) {
                    return absl::FailedPreconditionError(absl::StrFormat(
                        "client flags are 0x%08x, expected 0x%08x", flags, *expected));
                  }
                  connection.set_no_zeroes((flags & kClientFlagNoZeroes) != 0);
                  return absl::OkStatus();
                }};
}

Action ExpectOption(Option option) {
  return Action{absl::StrCat("ExpectOption(", OptionName(option), ")"),
                [option](ScriptedConnection& connection) -> absl::Status {
                  absl::StatusOr<RecordedOption> received = ReadOption(connection);
                  if (!received.ok()) return received.status();
                  if (received->option != static_cast<uint32_t>(option)) {
                    return absl::FailedPreconditionError(
                        absl::StrCat("client sent ", OptionDisplayName(received->option),
                                     ", expected ", OptionName(option)));
                  }
                  return absl::OkStatus();
                }};
}

Action SendOptionReply(Option option, OptionReply reply, std::vector<uint8_t> payload) {
  return Action{
      absl::StrCat("SendOptionReply(", OptionName(option), ", ", OptionReplyName(reply), ")"),
      [option, reply, payload = std::move(payload)](ScriptedConnection& connection) {
        return SendOptionReplyTo(connection, static_cast<uint32_t>(option), reply, payload);
      }};
}

Action HandleOptionsUntilGo(ScriptedExport export_config) {
  return Action{"HandleOptionsUntilGo",
                [export_config = std::move(export_config)](ScriptedConnection& connection) {
                  return HandleOptions(connection, export_config, std::nullopt);
                }};
}

Action HandleOptionsUntil(Option option, ScriptedExport export_config) {
  return Action{absl::StrCat("HandleOptionsUntil(", OptionName(option), ")"),
                [option, export_config = std::move(export_config)](ScriptedConnection& connection) {
                  return HandleOptions(connection, export_config, option);
                }};
}

// --- Transmission actions ------------------------------------------------------------------------

Action ExpectRequest(Command command) {
  return Action{
      absl::StrCat("ExpectRequest(", CommandName(command), ")"),
      [command](ScriptedConnection& connection) { return ExpectOneRequest(connection, command); }};
}

Action ExpectRequests(int count, Command command) {
  return Action{absl::StrCat("ExpectRequests(", count, " x ", CommandName(command), ")"),
                [count, command](ScriptedConnection& connection) {
                  for (int i = 0; i < count; ++i) {
                    absl::Status status = ExpectOneRequest(connection, command);
                    if (!status.ok()) return status;
                  }
                  return absl::OkStatus();
                }};
}

Action ExpectRequestHeader(Command command) {
  return Action{absl::StrCat("ExpectRequestHeader(", CommandName(command), ")"),
                [command](ScriptedConnection& connection) {
                  return ExpectOneRequest(connection, command, /*with_payload=*/false);
                }};
}

Action ReceiveWritePayload(size_t request_index) {
  return Action{
      absl::StrCat("ReceiveWritePayload(", request_index, ")"),
      [request_index](ScriptedConnection& connection) -> absl::Status {
        absl::StatusOr<const RecordedRequest*> request = connection.request(request_index);
        if (!request.ok()) return request.status();
        if ((*request)->header.command != Command::kWrite) {
          return absl::FailedPreconditionError(absl::StrCat(
              "request ", request_index, " is ", CommandDisplayName((*request)->header.command),
              ", which carries no payload"));
        }
        return ReceivePayload(connection, &connection.requests()[request_index]);
      }};
}

Action ExpectDisconnect() {
  return Action{"ExpectDisconnect", [](ScriptedConnection& connection) {
                  absl::Status status = ExpectOneRequest(connection, Command::kDisc);
                  if (!status.ok()) return status;
                  std::vector<uint8_t> after;
                  status = connection.DrainUntilClosed(connection.io_timeout(), &after);
                  if (!status.ok()) return status;
                  if (!after.empty()) {
                    return absl::FailedPreconditionError(
                        absl::StrCat("client sent ", after.size(), " bytes after NBD_CMD_DISC"));
                  }
                  return absl::OkStatus();
                }};
}

Action ReplySimple(size_t request_index, uint32_t error, std::vector<uint8_t> payload) {
  return ReplyTo(absl::StrCat("ReplySimple(", request_index, ", error ", error, ", ",
                              payload.size(), " payload bytes)"),
                 request_index,
                 [error, payload = std::move(payload)](
                     ScriptedConnection&,
                     const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   return SimpleReplyBytes(error, request.header.cookie, payload);
                 });
}

Action ReplyChunk(size_t request_index, uint16_t flags, uint16_t type,
                  std::vector<uint8_t> payload) {
  return ReplyTo(absl::StrFormat("ReplyChunk(%d, flags 0x%04x, type 0x%04x, %d payload bytes)",
                                 request_index, flags, type, payload.size()),
                 request_index,
                 [flags, type, payload = std::move(payload)](
                     ScriptedConnection&,
                     const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   return ChunkBytes(flags, type, request.header.cookie, payload);
                 });
}

Action ReplyChunkHeader(size_t request_index, uint16_t flags, uint16_t type, uint32_t length) {
  return ReplyTo(absl::StrFormat("ReplyChunkHeader(%d, flags 0x%04x, type 0x%04x, length %d)",
                                 request_index, flags, type, length),
                 request_index,
                 [flags, type, length](ScriptedConnection&, const RecordedRequest& request)
                     -> absl::StatusOr<std::vector<uint8_t>> {
                   return ChunkHeaderBytes(flags, type, request.header.cookie, length);
                 });
}

Action ReplyReadData(size_t request_index, uint64_t offset_in_request, std::vector<uint8_t> data,
                     bool done) {
  return ReplyTo(absl::StrCat("ReplyReadData(", request_index, ", at +", offset_in_request, ", ",
                              data.size(), " bytes", done ? ", done" : "", ")"),
                 request_index,
                 [offset_in_request, data = std::move(data), done](
                     ScriptedConnection& connection,
                     const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   absl::Status status = RequireStructured(connection, "ReplyReadData");
                   if (!status.ok()) return status;
                   ByteBuilder payload;
                   payload.U64(request.header.offset + offset_in_request).Bytes(data);
                   return ChunkBytes(DoneFlag(done), static_cast<uint16_t>(ReplyType::kOffsetData),
                                     request.header.cookie, payload.bytes());
                 });
}

Action ReplyReadPattern(size_t request_index) {
  return ReplyTo(absl::StrCat("ReplyReadPattern(", request_index, ")"), request_index,
                 [](ScriptedConnection& connection,
                    const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   std::vector<uint8_t> data =
                       PatternBytes(request.header.offset, request.header.length);
                   if (connection.reply_mode() == ReplyMode::kSimple) {
                     return SimpleReplyBytes(0, request.header.cookie, data);
                   }
                   ByteBuilder payload;
                   payload.U64(request.header.offset).Bytes(data);
                   return ChunkBytes(kReplyFlagDone, static_cast<uint16_t>(ReplyType::kOffsetData),
                                     request.header.cookie, payload.bytes());
                 });
}

Action ReplyReadPattern(size_t request_index, uint64_t offset_in_request, uint64_t length,
                        bool done) {
  return ReplyTo(absl::StrCat("ReplyReadPattern(", request_index, ", at +", offset_in_request, ", ",
                              length, " bytes", done ? ", done" : "", ")"),
                 request_index,
                 [offset_in_request, length, done](
                     ScriptedConnection& connection,
                     const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   absl::Status status = RequireStructured(connection, "ReplyReadPattern");
                   if (!status.ok()) return status;
                   uint64_t offset = request.header.offset + offset_in_request;
                   ByteBuilder payload;
                   payload.U64(offset).Bytes(PatternBytes(offset, length));
                   return ChunkBytes(DoneFlag(done), static_cast<uint16_t>(ReplyType::kOffsetData),
                                     request.header.cookie, payload.bytes());
                 });
}

Action ReplyHole(size_t request_index, uint64_t offset_in_request, uint32_t length, bool done) {
  return ReplyTo(absl::StrCat("ReplyHole(", request_index, ", at +", offset_in_request, ", ",
                              length, " bytes", done ? ", done" : "", ")"),
                 request_index,
                 [offset_in_request, length, done](
                     ScriptedConnection& connection,
                     const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   absl::Status status = RequireStructured(connection, "ReplyHole");
                   if (!status.ok()) return status;
                   ByteBuilder payload;
                   payload.U64(request.header.offset + offset_in_request).U32(length);
                   return ChunkBytes(DoneFlag(done), static_cast<uint16_t>(ReplyType::kOffsetHole),
                                     request.header.cookie, payload.bytes());
                 });
}

Action ReplyError(size_t request_index, uint32_t error, std::string message, bool done) {
  return ReplyTo(absl::StrCat("ReplyError(", request_index, ", ", NbdErrorName(error), ", \"",
                              message, "\"", done ? ", done" : "", ")"),
                 request_index,
                 [error, message = std::move(message), done](
                     ScriptedConnection& connection,
                     const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   if (connection.reply_mode() == ReplyMode::kSimple) {
                     return SimpleReplyBytes(error, request.header.cookie);
                   }
                   return ChunkBytes(DoneFlag(done), static_cast<uint16_t>(ReplyType::kError),
                                     request.header.cookie, ErrorChunkPayload(error, message));
                 });
}

Action ReplyBlockStatus(size_t request_index, uint32_t context_id, std::vector<Extent> extents,
                        bool done) {
  return ReplyTo(absl::StrCat("ReplyBlockStatus(", request_index, ", context ", context_id, ", ",
                              extents.size(), " extents", done ? ", done" : "", ")"),
                 request_index,
                 [context_id, extents = std::move(extents), done](
                     ScriptedConnection& connection,
                     const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   absl::Status status = RequireStructured(connection, "ReplyBlockStatus");
                   if (!status.ok()) return status;
                   ByteBuilder payload;
                   payload.U32(context_id);
                   for (const Extent& extent : extents) {
                     payload.U32(static_cast<uint32_t>(extent.length))
                         .U32(static_cast<uint32_t>(extent.flags));
                   }
                   return ChunkBytes(DoneFlag(done), static_cast<uint16_t>(ReplyType::kBlockStatus),
                                     request.header.cookie, payload.bytes());
                 });
}

Action ReplyNone(size_t request_index) {
  return ReplyTo(absl::StrCat("ReplyNone(", request_index, ")"), request_index,
                 [](ScriptedConnection& connection,
                    const RecordedRequest& request) -> absl::StatusOr<std::vector<uint8_t>> {
                   if (connection.reply_mode() == ReplyMode::kSimple) {
                     return SimpleReplyBytes(0, request.header.cookie);
                   }
                   return ChunkBytes(kReplyFlagDone, static_cast<uint16_t>(ReplyType::kNone),
                                     request.header.cookie, {});
                 });
}

// --- Raw control ---------------------------------------------------------------------------------

Action SendRaw(std::vector<uint8_t> bytes) {
  return Action{absl::StrCat("SendRaw(", bytes.size(), " bytes)"),
                [bytes = std::move(bytes)](ScriptedConnection& connection) {
                  return connection.Send(bytes);
                }};
}

Action SendByteByByte(std::vector<uint8_t> bytes, absl::Duration delay) {
  return Action{absl::StrCat("SendByteByByte(", bytes.size(), " bytes)"),
                [bytes = std::move(bytes), delay](ScriptedConnection& connection) {
                  for (size_t i = 0; i < bytes.size(); ++i) {
                    absl::Status status = connection.Send(absl::MakeConstSpan(&bytes[i], 1));
                    if (!status.ok()) return status;
                    absl::SleepFor(delay);
                  }
                  return absl::OkStatus();
                }};
}

Action Trickle(absl::Duration delay) {
  return Action{absl::StrCat("Trickle(", absl::FormatDuration(delay), ")"),
                [delay](ScriptedConnection& connection) {
                  connection.set_trickle(delay);
                  return absl::OkStatus();
                }};
}

Action Sleep(absl::Duration duration) {
  return Action{absl::StrCat("Sleep(", absl::FormatDuration(duration), ")"),
                [duration](ScriptedConnection&) {
                  absl::SleepFor(duration);
                  return absl::OkStatus();
                }};
}

Action CutAfter(uint64_t bytes) {
  return Action{absl::StrCat("CutAfter(", bytes, " bytes)"),
                [bytes](ScriptedConnection& connection) {
                  connection.CutAfter(bytes);
                  return absl::OkStatus();
                }};
}

Action Close() {
  return Action{"Close", [](ScriptedConnection& connection) {
                  connection.Shutdown();
                  return absl::OkStatus();
                }};
}

Action Stall() {
  return Action{"Stall", [](ScriptedConnection& connection) {
                  return connection.DrainUntilClosed(connection.stall_limit());
                }};
}

Action ExpectClose() {
  return Action{"ExpectClose", [](ScriptedConnection& connection) {
                  return connection.DrainUntilClosed(connection.io_timeout());
                }};
}

Action Custom(std::string description, std::function<absl::Status(ScriptedConnection&)> run) {
  return Action{std::move(description), std::move(run)};
}

}  // namespace nbd::testing
