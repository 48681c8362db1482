// Shared by the CPU kernels: the type arithmetic runs in.
#pragma once

#include <type_traits>

namespace fastgen {

// Half types accumulate in float; double stays double.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace fastgen
