// The Operation's opaque state (runtime/operation_state.h): constructed and destroyed with
// the Operation.
#include <new>

#include "nbdring/operation.h"
#include "runtime/operation_state.h"

namespace nbdring {

Operation::StateStorage::StateStorage() {
  static_assert(sizeof(OperationState) <= sizeof(bytes_),
                "nbdring/operation.h reserves too few bytes for OperationState");
  static_assert(alignof(OperationState) <= 8, "OperationState needs more alignment");
  new (bytes_) OperationState();
}

Operation::StateStorage::~StateStorage() {
  std::launder(reinterpret_cast<OperationState*>(bytes_))->~OperationState();
}

}  // namespace nbdring
