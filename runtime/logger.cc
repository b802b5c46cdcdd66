#include "runtime/logger.h"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace nbdring {

std::shared_ptr<const Logger> Logger::Create(const LogHook& hook, LogLevel level) {
  auto logger = std::make_shared<Logger>();
  if (hook) {
    logger->sink_ = hook;
    logger->max_level_ = static_cast<int>(level);
    return logger;
  }
  const char* debug = std::getenv("NBDRING_DEBUG");
  if (debug != nullptr && std::string(debug) == "1") {
    logger->sink_ = [](LogLevel, absl::string_view message) {
      // One fprintf per line, so lines from several threads do not interleave.
      std::fprintf(stderr, "nbdring: %.*s\n", static_cast<int>(message.size()), message.data());
    };
    logger->max_level_ = static_cast<int>(LogLevel::kDebug);
  }
  return logger;
}

}  // namespace nbdring
