#include "nbd/export_info.h"

namespace nbd {

const char* ReplyModeName(ReplyMode mode) {
  switch (mode) {
    case ReplyMode::kSimple: return "simple";
    case ReplyMode::kStructured: return "structured";
    case ReplyMode::kExtended: return "extended";
  }
  return "unknown";
}

const MetaContext* ExportInfo::FindMetaContext(const std::string& context_name) const {
  for (const MetaContext& context : meta_contexts) {
    if (context.name == context_name) return &context;
  }
  return nullptr;
}

}  // namespace nbd
