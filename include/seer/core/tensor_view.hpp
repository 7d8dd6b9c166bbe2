// Non-owning strided views of host or device memory.
//
// Extents and strides are 64-bit and counted in elements: at 1M tokens x 32 heads x 128 dims one
// tensor already holds 2^32 elements, so no offset in seer is ever computed in 32 bits.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "seer/core/error.hpp"
#include "seer/core/platform.hpp"

namespace seer {

template <class T, int Rank>
struct TensorView {
  static_assert(Rank >= 1, "a tensor view has at least one dimension");

  T* data = nullptr;
  std::array<std::int64_t, Rank> extent{};
  std::array<std::int64_t, Rank> stride{};

  // A densely packed row-major view (last index fastest).
  static TensorView contiguous(T* data, const std::array<std::int64_t, Rank>& extent) {
    TensorView view{data, extent, {}};
    std::int64_t step = 1;
    for (int axis = Rank - 1; axis >= 0; --axis) {
      view.stride[axis] = step;
      step *= extent[axis];
    }
    return view;
  }

  std::int64_t size() const {
    std::int64_t count = 1;
    for (auto e : extent) count *= e;
    return count;
  }

  template <class... Index>
  std::int64_t offset(Index... index) const {
    static_assert(sizeof...(Index) == Rank, "one index per dimension");
    const std::array<std::int64_t, Rank> at{static_cast<std::int64_t>(index)...};
    std::int64_t result = 0;
    for (int axis = 0; axis < Rank; ++axis) result += at[axis] * stride[axis];
    return result;
  }

  template <class... Index>
  T& operator()(Index... index) const {
    return data[offset(index...)];
  }

  // A template so that TensorView<const T> has no conversion to itself (nvcc warns about one).
  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator TensorView<const U, Rank>() const {
    return {data, extent, stride};
  }
};

// Checks what every view handed to seer must satisfy: data present (unless empty), extents
// non-negative, strides non-negative. `name` is the argument name used in the error.
template <class T, int Rank>
void validate_view(const TensorView<T, Rank>& view, const char* name) {
  for (int axis = 0; axis < Rank; ++axis) {
    require(view.extent[axis] >= 0, name, "extent of dimension ", axis, " is ", view.extent[axis], ", expected >= 0");
    require(view.stride[axis] >= 0, name, "stride of dimension ", axis, " is ", view.stride[axis],
            ", expected >= 0 (negative strides are not supported)");
  }
  require(view.data != nullptr || view.size() == 0, name, "data pointer is null but the view holds ", view.size(),
          " elements");
}

}  // namespace seer
