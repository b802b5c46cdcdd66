// tests/tools/json_keys.h — the keys of a JSON object in document order, for the tests that
// pin nbd-bench's documented JSON schemas.
#ifndef NBDRING_TESTS_TOOLS_JSON_KEYS_H_
#define NBDRING_TESTS_TOOLS_JSON_KEYS_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace nbdbench::testing {

inline std::vector<std::string> Keys(const nlohmann::ordered_json& json) {
  std::vector<std::string> keys;
  for (auto it = json.begin(); it != json.end(); ++it) keys.push_back(it.key());
  return keys;
}

}  // namespace nbdbench::testing

#endif  // NBDRING_TESTS_TOOLS_JSON_KEYS_H_
