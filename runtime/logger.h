// runtime/logger.h — where a client's diagnostics go: ClientOptions::log at its level, or
// stderr when NBDRING_DEBUG=1 and no hook is set, or nowhere.
//
// The hot path asks enabled(kDebug) first (one load and compare) and builds no message when
// it is off. A Logger is immutable once made and shared (shared_ptr) by the client's
// connections, rings and reconnect attempts, which may all log at once.
#ifndef NBDRING_RUNTIME_LOGGER_H_
#define NBDRING_RUNTIME_LOGGER_H_

#include <functional>
#include <memory>

#include "absl/strings/string_view.h"
#include "nbdring/log_level.h"

namespace nbdring {

class Logger {
 public:
  // From the client's hook and level, else the environment (NBDRING_DEBUG).
  static std::shared_ptr<const Logger> Create(const LogHook& hook, LogLevel level);

  bool enabled(LogLevel level) const { return static_cast<int>(level) <= max_level_; }
  void Log(LogLevel level, absl::string_view message) const {
    if (enabled(level)) sink_(level, message);
  }

 private:
  LogHook sink_;
  int max_level_ = -1;  // the most detailed level logged; -1: off
};

}  // namespace nbdring

#endif  // NBDRING_RUNTIME_LOGGER_H_
