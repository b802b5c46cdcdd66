// nbdring/log_level.h — how much a Client tells its log hook (ClientOptions::log).
#ifndef NBDRING_LOG_LEVEL_H_
#define NBDRING_LOG_LEVEL_H_

#include <functional>

#include "absl/strings/string_view.h"

namespace nbdring {

enum class LogLevel {
  kError,  // a connection failed, a reconnect gave up
  kInfo,   // connecting, what was negotiated (export, flags, TLS), reconnects, closing
  kDebug,  // every request sent and every reply, as libnbd's LIBNBD_DEBUG=1 shows them
};

using LogHook = std::function<void(LogLevel level, absl::string_view message)>;

}  // namespace nbdring

#endif  // NBDRING_LOG_LEVEL_H_
