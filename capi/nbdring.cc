// capi/nbdring.cc — the C API (capi/include/nbdring.h) over the public C++ client. Uses only
// nbdring/client.h and the protocol's error table; no runtime internals.
#include "nbdring.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "nbd/errors.h"
#include "nbdring/client.h"
#include "nbdring/runtime.h"

struct nbdring_options {
  nbdring::ClientOptions options;
};

struct nbdring_runtime {
  std::shared_ptr<nbdring::Runtime> runtime;
};

namespace {

struct AioRequest;

// The last failure on this thread (libnbd's convention).
thread_local std::string last_error;
thread_local int last_errno = 0;
// True while this thread runs a C completion: blocking calls would wait for themselves.
thread_local bool in_completion = false;
// Asynchronous completions this thread has run (what nbdring_poll reports per call).
thread_local int completions_run = 0;

int Fail(int error_number, std::string message) {
  last_errno = error_number;
  last_error = std::move(message);
  return -1;
}

int FailWith(const absl::Status& status, const char* call) {
  return Fail(nbd::StatusToErrno(status), absl::StrCat(call, ": ", status.message()));
}

}  // namespace

struct nbdring_client {
  std::unique_ptr<nbdring::Client> client;
  std::mutex mutex;  // guards in_flight
  absl::flat_hash_map<int64_t, AioRequest*> in_flight;
  int64_t next_cookie = 1;  // guarded by mutex
};

namespace {

struct AioRequest : nbdring::Operation {
  nbdring_client* owner = nullptr;
  int64_t cookie = 0;
  uint64_t submission = 0;        // 0 until Submit returned (guarded by owner->mutex)
  bool cancel_requested = false;  // a cancel that came before `submission` was known
  nbdring_completion completion = nullptr;
  void* user_data = nullptr;
};

void OnAioComplete(nbdring::Operation* operation, const absl::Status& status) {
  auto* request = static_cast<AioRequest*>(operation);
  {
    std::lock_guard<std::mutex> lock(request->owner->mutex);
    request->owner->in_flight.erase(request->cookie);
  }
  if (request->completion != nullptr) {
    in_completion = true;
    request->completion(request->user_data, status.ok() ? 0 : nbd::StatusToErrno(status));
    in_completion = false;
    ++completions_run;
  }
  delete request;
}

bool CheckClient(const nbdring_client* client, const char* call) {
  if (client == nullptr) {
    Fail(EFAULT, absl::StrCat(call, ": client is NULL"));
    return false;
  }
  return true;
}

bool CheckNotInCompletion(const char* call) {
  if (in_completion) {
    Fail(EDEADLK, absl::StrCat(call, " called from a completion callback would wait for "
                                     "itself; use the nbdring_aio_* calls there"));
    return false;
  }
  return true;
}

// NBD request flags are 16 bits wide.
bool CheckFlags(uint32_t flags, const char* call) {
  if (flags > 0xffff) {
    Fail(EINVAL, absl::StrCat(call, ": flags 0x", absl::Hex(flags),
                              " do not fit NBD's 16-bit flags"));
    return false;
  }
  return true;
}

bool CheckBuffer(const void* buffer, size_t count, const char* call) {
  if (buffer == nullptr && count > 0) {
    Fail(EFAULT, absl::StrCat(call, ": buffer is NULL"));
    return false;
  }
  return true;
}

int Sync(const char* call, const absl::Status& status) {
  if (!status.ok()) return FailWith(status, call);
  return 0;
}

int64_t SubmitAio(nbdring_client* client, const char* call, nbd::Command command,
                  void* buffer, uint64_t count, uint64_t offset, uint32_t flags,
                  nbdring_completion completion, void* user_data) {
  if (!CheckClient(client, call)) return -1;
  if (!CheckFlags(flags, call)) return -1;
  auto request = std::make_unique<AioRequest>();
  request->command = command;
  request->flags = static_cast<uint16_t>(flags);
  request->offset = offset;
  request->length = count;
  request->buffer = buffer;
  request->on_complete = &OnAioComplete;
  request->owner = client;
  request->completion = completion;
  request->user_data = user_data;
  // Bad arguments fail the call itself, not later through the completion.
  if (absl::Status valid = client->client->Validate(*request); !valid.ok()) {
    return FailWith(valid, call);
  }
  int64_t cookie;
  {
    std::lock_guard<std::mutex> lock(client->mutex);
    cookie = client->next_cookie++;
    request->cookie = cookie;
    client->in_flight.emplace(cookie, request.get());
  }
  AioRequest* submitted = request.release();  // owned by OnAioComplete from here
  const uint64_t submission = client->client->Submit(submitted);
  // `submitted` may have completed and been freed already: only the table is consulted.
  {
    std::lock_guard<std::mutex> lock(client->mutex);
    auto it = client->in_flight.find(cookie);
    if (it != client->in_flight.end()) {
      it->second->submission = submission;
      if (it->second->cancel_requested) client->client->Cancel(it->second, submission);
    }
  }
  return cookie;
}

bool ParseBool(const char* value, bool* out) {
  std::string text = absl::AsciiStrToLower(value);
  if (text == "true" || text == "1" || text == "yes" || text == "on") {
    *out = true;
  } else if (text == "false" || text == "0" || text == "no" || text == "off") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

}  // namespace

extern "C" {

nbdring_options* nbdring_options_create(void) { return new nbdring_options(); }

void nbdring_options_destroy(nbdring_options* options) { delete options; }

int nbdring_options_set(nbdring_options* options, const char* key, const char* value) {
  if (options == nullptr) return Fail(EFAULT, "nbdring_options_set: options is NULL");
  if (key == nullptr || value == nullptr) {
    return Fail(EFAULT, "nbdring_options_set: key or value is NULL");
  }
  nbdring::ClientOptions& o = options->options;
  const std::string name = key;
  int64_t number = 0;
  bool flag = false;
  auto bad_value = [&](const char* expected) {
    return Fail(EINVAL, absl::StrCat("nbdring_options_set: option '", name, "' needs ",
                                     expected, ", got '", value, "'"));
  };
  auto number_in = [&](int64_t low, int64_t high) {
    return absl::SimpleAtoi(value, &number) && number >= low && number <= high;
  };
  if (name == "connections") {
    if (!number_in(1, 1024)) return bad_value("a number from 1 to 1024");
    o.connections = static_cast<int>(number);
  } else if (name == "threads") {
    if (!number_in(0, 256)) return bad_value("0 (caller-driven: nbdring_poll) or 1 to 256");
    o.threads = static_cast<int>(number);
  } else if (name == "reconnect_attempts") {
    if (!number_in(0, 1000000)) return bad_value("a number from 0 (no limit) to 1000000");
    o.reconnect_attempts = static_cast<int>(number);
  } else if (name == "inflight_limit") {
    if (std::strcmp(value, "auto") == 0) {
      o.inflight_limit = 0;
    } else if (!number_in(0, 65536)) {
      return bad_value("a number from 1 to 65536, or auto (or 0)");
    } else {
      o.inflight_limit = static_cast<uint32_t>(number);
    }
  } else if (name == "receive_buffer_bytes") {
    if (!number_in(4096, 1 << 30)) return bad_value("a number of bytes from 4096 to 1 GiB");
    o.receive_buffer_bytes = static_cast<uint32_t>(number);
  } else if (name == "request_timeout_ms" || name == "connect_timeout_ms" ||
             name == "close_timeout_ms" || name == "reconnect_delay_ms") {
    if (!number_in(0, INT64_MAX / 1000000)) return bad_value("milliseconds (0 or more)");
    const absl::Duration duration = absl::Milliseconds(number);
    if (name == "request_timeout_ms") o.request_timeout = duration;
    if (name == "connect_timeout_ms") o.connect_timeout = duration;
    if (name == "close_timeout_ms") o.close_timeout = duration;
    if (name == "reconnect_delay_ms") o.reconnect_delay = duration;
  } else if (name == "completion_batch_delay_us") {
    if (!number_in(0, 1000000)) return bad_value("microseconds from 0 to 1000000");
    o.completion_batch_delay = absl::Microseconds(number);
  } else if (name == "reconnect" || name == "structured_replies") {
    if (!ParseBool(value, &flag)) return bad_value("true or false");
    (name == "reconnect" ? o.reconnect : o.structured_replies) = flag;
  } else if (name == "ring_cpus") {
    std::vector<int> cpus;
    for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipEmpty())) {
      int cpu = 0;
      if (!absl::SimpleAtoi(part, &cpu) || cpu < 0) return bad_value("a list of CPUs like 0,2");
      cpus.push_back(cpu);
    }
    o.ring_cpus = std::move(cpus);
  } else if (name == "tls") {
    const std::string mode = absl::AsciiStrToLower(value);
    if (mode == "disable") {
      o.tls = nbdring::ClientOptions::Tls::kDisable;
    } else if (mode == "allow") {
      o.tls = nbdring::ClientOptions::Tls::kAllow;
    } else if (mode == "require") {
      o.tls = nbdring::ClientOptions::Tls::kRequire;
    } else {
      return bad_value("disable, allow or require");
    }
  } else if (name == "tls_certificates" || name == "tls_psk_file" || name == "tls_username" ||
             name == "tls_hostname") {
    if (*value == '\0') return bad_value("a non-empty value");
    if (name == "tls_certificates") o.tls_certificates = value;
    if (name == "tls_psk_file") o.tls_psk_file = value;
    if (name == "tls_username") o.tls_username = value;
    if (name == "tls_hostname") o.tls_hostname = value;
  } else if (name == "tls_verify_peer") {
    if (!ParseBool(value, &flag)) return bad_value("true or false");
    o.tls_verify_peer = flag;
  } else if (name == "export_name") {
    o.address.export_name = value;  // for nbdring_connect_socket/_command (a URI names its own)
  } else if (name == "meta_context") {
    if (*value == '\0') return bad_value("a context name such as base:allocation");
    o.meta_contexts.push_back(value);
  } else {
    return Fail(EINVAL, absl::StrCat("nbdring_options_set: unknown option '", name, "'"));
  }
  return 0;
}

int nbdring_options_set_log(nbdring_options* options, nbdring_log_callback log, void* user_data,
                            int max_level) {
  if (options == nullptr) return Fail(EFAULT, "nbdring_options_set_log: options is NULL");
  if (max_level < NBDRING_LOG_ERROR || max_level > NBDRING_LOG_DEBUG) {
    return Fail(EINVAL, absl::StrCat("nbdring_options_set_log: level ", max_level,
                                     " is not NBDRING_LOG_ERROR, _INFO or _DEBUG"));
  }
  if (log == nullptr) {
    options->options.log = nullptr;
    return 0;
  }
  options->options.log_level = static_cast<nbdring::LogLevel>(max_level);
  options->options.log = [log, user_data](nbdring::LogLevel level, absl::string_view message) {
    const std::string text(message);  // NUL-terminated for C
    log(user_data, static_cast<int>(level), text.c_str());
  };
  return 0;
}

namespace {

// A connected client as a C handle, or NULL with the error recorded for `call`.
nbdring_client* Wrap(absl::StatusOr<std::unique_ptr<nbdring::Client>> client, const char* call) {
  if (!client.ok()) {
    FailWith(client.status(), call);
    return nullptr;
  }
  auto* handle = new nbdring_client();
  handle->client = *std::move(client);
  return handle;
}

}  // namespace

nbdring_client* nbdring_connect(const char* uri, const nbdring_options* options) {
  if (uri == nullptr) {
    Fail(EFAULT, "nbdring_connect: uri is NULL");
    return nullptr;
  }
  nbdring::ClientOptions client_options =
      options != nullptr ? options->options : nbdring::ClientOptions();
  client_options.uri = uri;
  return Wrap(nbdring::Client::Connect(client_options), "nbdring_connect");
}

nbdring_client* nbdring_connect_socket(int fd, const nbdring_options* options) {
  return Wrap(nbdring::Client::ConnectSocket(
                  fd, options != nullptr ? options->options : nbdring::ClientOptions()),
              "nbdring_connect_socket");
}

nbdring_client* nbdring_connect_command(char** argv, const nbdring_options* options) {
  if (argv == nullptr || argv[0] == nullptr) {
    Fail(EFAULT, "nbdring_connect_command: argv is NULL or empty");
    return nullptr;
  }
  std::vector<std::string> command;
  for (char** arg = argv; *arg != nullptr; ++arg) command.emplace_back(*arg);
  return Wrap(nbdring::Client::ConnectCommand(
                  command, options != nullptr ? options->options : nbdring::ClientOptions()),
              "nbdring_connect_command");
}

int nbdring_close(nbdring_client* client) {
  if (client == nullptr) return 0;
  if (!CheckNotInCompletion("nbdring_close")) return -1;
  absl::Status closed = client->client->Close();
  if (!closed.ok()) return FailWith(closed, "nbdring_close");
  delete client;
  return 0;
}

int nbdring_poll(nbdring_client* client, int timeout_ms) {
  if (!CheckClient(client, "nbdring_poll")) return -1;
  if (!CheckNotInCompletion("nbdring_poll")) return -1;
  const absl::Duration timeout =
      timeout_ms < 0 ? absl::InfiniteDuration() : absl::Milliseconds(timeout_ms);
  const int before = completions_run;
  absl::Status polled = client->client->Poll(timeout);
  if (!polled.ok()) return FailWith(polled, "nbdring_poll");
  return completions_run - before;
}

int nbdring_get_fd(nbdring_client* client) {
  if (!CheckClient(client, "nbdring_get_fd")) return -1;
  const int fd = client->client->fd();
  if (fd < 0) {
    return Fail(EINVAL, "nbdring_get_fd: only a caller-driven client (option threads=0) has "
                        "an fd, on the thread that connected it");
  }
  return fd;
}

nbdring_runtime* nbdring_runtime_create(const nbdring_options* options) {
  nbdring::RuntimeOptions runtime_options;
  if (options != nullptr) {
    runtime_options.threads = options->options.threads;
    runtime_options.ring_cpus = options->options.ring_cpus;
    runtime_options.completion_batch_delay = options->options.completion_batch_delay;
    runtime_options.completion_batch_min_in_flight =
        options->options.completion_batch_min_in_flight;
  }
  auto runtime = nbdring::Runtime::Create(runtime_options);
  if (!runtime.ok()) {
    FailWith(runtime.status(), "nbdring_runtime_create");
    return nullptr;
  }
  return new nbdring_runtime{*std::move(runtime)};
}

void nbdring_runtime_destroy(nbdring_runtime* runtime) { delete runtime; }

int nbdring_options_set_runtime(nbdring_options* options, nbdring_runtime* runtime) {
  if (options == nullptr) return Fail(EFAULT, "nbdring_options_set_runtime: options is NULL");
  options->options.runtime = runtime != nullptr ? runtime->runtime : nullptr;
  return 0;
}

int nbdring_runtime_poll(nbdring_runtime* runtime, int timeout_ms) {
  if (runtime == nullptr) return Fail(EFAULT, "nbdring_runtime_poll: runtime is NULL");
  if (!CheckNotInCompletion("nbdring_runtime_poll")) return -1;
  const absl::Duration timeout =
      timeout_ms < 0 ? absl::InfiniteDuration() : absl::Milliseconds(timeout_ms);
  const int before = completions_run;
  absl::Status polled = runtime->runtime->Poll(timeout);
  if (!polled.ok()) return FailWith(polled, "nbdring_runtime_poll");
  return completions_run - before;
}

int nbdring_runtime_get_fd(nbdring_runtime* runtime) {
  if (runtime == nullptr) return Fail(EFAULT, "nbdring_runtime_get_fd: runtime is NULL");
  const int fd = runtime->runtime->fd();
  if (fd < 0) {
    return Fail(EINVAL, "nbdring_runtime_get_fd: only a caller-driven runtime (threads=0) has "
                        "an fd, on the thread that created it");
  }
  return fd;
}

const char* nbdring_get_error(void) { return last_error.c_str(); }
int nbdring_get_errno(void) { return last_errno; }

int64_t nbdring_get_size(nbdring_client* client) {
  if (!CheckClient(client, "nbdring_get_size")) return -1;
  return static_cast<int64_t>(client->client->size());
}

#define NBDRING_EXPORT_FLAG(function, expression)                 \
  int function(nbdring_client* client) {                          \
    if (!CheckClient(client, #function)) return -1;               \
    const nbd::ExportInfo& info = client->client->export_info();  \
    return (expression) ? 1 : 0;                                  \
  }
NBDRING_EXPORT_FLAG(nbdring_is_read_only, info.read_only())
NBDRING_EXPORT_FLAG(nbdring_can_flush, info.can_flush())
NBDRING_EXPORT_FLAG(nbdring_can_trim, info.can_trim())
NBDRING_EXPORT_FLAG(nbdring_can_zero, info.can_zero())
NBDRING_EXPORT_FLAG(nbdring_can_multi_conn, info.can_multi_conn())
#undef NBDRING_EXPORT_FLAG

int nbdring_pread(nbdring_client* client, void* buf, size_t count, uint64_t offset,
                  uint32_t flags) {
  if (!CheckClient(client, "nbdring_pread") || !CheckNotInCompletion("nbdring_pread") ||
      !CheckBuffer(buf, count, "nbdring_pread")) {
    return -1;
  }
  if (!CheckFlags(flags, "nbdring_pread")) return -1;
  return Sync("nbdring_pread",
              client->client->PreadSync(buf, count, offset, static_cast<uint16_t>(flags)));
}

int nbdring_pwrite(nbdring_client* client, const void* buf, size_t count, uint64_t offset,
                   uint32_t flags) {
  if (!CheckClient(client, "nbdring_pwrite") || !CheckNotInCompletion("nbdring_pwrite") ||
      !CheckBuffer(buf, count, "nbdring_pwrite")) {
    return -1;
  }
  if (!CheckFlags(flags, "nbdring_pwrite")) return -1;
  return Sync("nbdring_pwrite",
              client->client->PwriteSync(buf, count, offset, static_cast<uint16_t>(flags)));
}

int nbdring_flush(nbdring_client* client, uint32_t flags) {
  if (!CheckClient(client, "nbdring_flush") || !CheckNotInCompletion("nbdring_flush")) return -1;
  if (flags != 0) return Fail(EINVAL, "nbdring_flush: flush takes no flags");
  return Sync("nbdring_flush", client->client->FlushSync());
}

int nbdring_trim(nbdring_client* client, uint64_t count, uint64_t offset, uint32_t flags) {
  if (!CheckClient(client, "nbdring_trim") || !CheckNotInCompletion("nbdring_trim")) return -1;
  if (!CheckFlags(flags, "nbdring_trim")) return -1;
  return Sync("nbdring_trim",
              client->client->TrimSync(count, offset, static_cast<uint16_t>(flags)));
}

int nbdring_zero(nbdring_client* client, uint64_t count, uint64_t offset, uint32_t flags) {
  if (!CheckClient(client, "nbdring_zero") || !CheckNotInCompletion("nbdring_zero")) return -1;
  if (!CheckFlags(flags, "nbdring_zero")) return -1;
  return Sync("nbdring_zero",
              client->client->WriteZeroesSync(count, offset, static_cast<uint16_t>(flags)));
}

int nbdring_cache(nbdring_client* client, uint64_t count, uint64_t offset, uint32_t flags) {
  if (!CheckClient(client, "nbdring_cache") || !CheckNotInCompletion("nbdring_cache")) return -1;
  if (flags != 0) return Fail(EINVAL, "nbdring_cache: cache takes no flags");
  return Sync("nbdring_cache", client->client->CacheSync(count, offset));
}

int nbdring_block_status(nbdring_client* client, uint64_t count, uint64_t offset,
                         nbdring_extent_callback extent, void* user_data, uint32_t flags) {
  if (!CheckClient(client, "nbdring_block_status") ||
      !CheckNotInCompletion("nbdring_block_status")) {
    return -1;
  }
  if (extent == nullptr) return Fail(EFAULT, "nbdring_block_status: extent callback is NULL");
  if (!CheckFlags(flags, "nbdring_block_status")) return -1;
  const nbdring::ExportInfo& info = client->client->export_info();
  if (info.meta_contexts.empty()) {
    return Fail(ENOTSUP,
                "nbdring_block_status: no meta context was negotiated (set option "
                "\"meta_context\", e.g. base:allocation)");
  }
  std::vector<std::pair<uint32_t, std::vector<nbd::Extent>>> extents;
  if (Sync("nbdring_block_status",
           client->client->BlockStatusSync(count, offset, &extents,
                                           static_cast<uint16_t>(flags))) != 0) {
    return -1;
  }
  for (const auto& [context_id, list] : extents) {
    const std::string name = [&] {
      for (const nbd::MetaContext& context : info.meta_contexts) {
        if (context.id == context_id) return context.name;
      }
      return std::string("unknown");
    }();
    uint64_t at = offset;
    for (const nbd::Extent& one : list) {
      extent(user_data, name.c_str(), at, one.length, one.flags);
      at += one.length;
    }
  }
  return 0;
}

int nbdring_get_stats(nbdring_client* client, nbdring_stats* stats) {
  if (!CheckClient(client, "nbdring_get_stats")) return -1;
  if (stats == nullptr) return Fail(EFAULT, "nbdring_get_stats: stats is NULL");
  const nbdring::ClientStats now = client->client->stats();
  *stats = nbdring_stats{};
  stats->requests = now.requests;
  stats->errors = now.errors;
  stats->bytes_read = now.bytes_read;
  stats->bytes_written = now.bytes_written;
  stats->reconnects = now.reconnects;
  stats->queue_full_waits = now.queue_full_waits;
  stats->read_p50_ns = now.read_latency.PercentileNs(0.5);
  stats->read_p99_ns = now.read_latency.PercentileNs(0.99);
  stats->write_p50_ns = now.write_latency.PercentileNs(0.5);
  stats->write_p99_ns = now.write_latency.PercentileNs(0.99);
  stats->inflight_limit = now.inflight_limit;
  return 0;
}

char* nbdring_metrics_text(nbdring_client* client, const char* labels) {
  if (!CheckClient(client, "nbdring_metrics_text")) return nullptr;
  const std::string text =
      nbdring::OpenMetricsText(client->client->stats(), labels == nullptr ? "" : labels);
  char* copy = static_cast<char*>(std::malloc(text.size() + 1));
  if (copy == nullptr) {
    Fail(ENOMEM, "nbdring_metrics_text: out of memory");
    return nullptr;
  }
  std::memcpy(copy, text.c_str(), text.size() + 1);
  return copy;
}

int64_t nbdring_aio_pread(nbdring_client* client, void* buf, size_t count, uint64_t offset,
                          nbdring_completion completion, void* user_data, uint32_t flags) {
  if (!CheckBuffer(buf, count, "nbdring_aio_pread")) return -1;
  return SubmitAio(client, "nbdring_aio_pread", nbd::Command::kRead, buf, count, offset, flags,
                   completion, user_data);
}

int64_t nbdring_aio_pwrite(nbdring_client* client, const void* buf, size_t count,
                           uint64_t offset, nbdring_completion completion, void* user_data,
                           uint32_t flags) {
  if (!CheckBuffer(buf, count, "nbdring_aio_pwrite")) return -1;
  return SubmitAio(client, "nbdring_aio_pwrite", nbd::Command::kWrite, const_cast<void*>(buf),
                   count, offset, flags, completion, user_data);
}

int64_t nbdring_aio_flush(nbdring_client* client, nbdring_completion completion,
                          void* user_data, uint32_t flags) {
  if (flags != 0) return Fail(EINVAL, "nbdring_aio_flush: flush takes no flags");
  return SubmitAio(client, "nbdring_aio_flush", nbd::Command::kFlush, nullptr, 0, 0, 0,
                   completion, user_data);
}

int nbdring_aio_cancel(nbdring_client* client, int64_t cookie) {
  if (!CheckClient(client, "nbdring_aio_cancel")) return -1;
  std::lock_guard<std::mutex> lock(client->mutex);
  auto it = client->in_flight.find(cookie);
  if (it == client->in_flight.end()) {
    return Fail(ENOENT, absl::StrCat("nbdring_aio_cancel: no request with cookie ", cookie,
                                     " is in flight"));
  }
  AioRequest* request = it->second;
  if (request->submission == 0) {
    request->cancel_requested = true;  // SubmitAio cancels it once Submit has returned
  } else {
    client->client->Cancel(request, request->submission);
  }
  return 0;
}

int64_t nbdring_aio_in_flight(nbdring_client* client) {
  if (!CheckClient(client, "nbdring_aio_in_flight")) return -1;
  std::lock_guard<std::mutex> lock(client->mutex);
  return static_cast<int64_t>(client->in_flight.size());
}

}  // extern "C"
