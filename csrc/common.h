// Argument checks shared by the CPU and CUDA kernels. The Python wrappers validate first and raise
// ValueError with friendlier messages; these checks keep direct torch.ops.pydet.* calls (TorchScript,
// export, C++ users) from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace pydet {

// The dtypes every kernel dispatches (isFloatingType would also admit the float8/float4 types).
inline void check_floating(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                    name, " must be float32, float64, float16 or bfloat16, got ", dtype);
}

// [N, 4] floating boxes.
inline void check_boxes(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) == 4, name, " must have shape [N, 4], got ", t.sizes());
  check_floating(t, name);
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                              const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), a_name, " and ", b_name,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), a_name, " and ", b_name,
                    " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

}  // namespace pydet
