// CUDA kernels for pairwise IoU and the R-CNN box coder (torchvision BoxCoder semantics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../boxes.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

template <typename scalar_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2, int64_t n,
                               int64_t m, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(idx, n * m) {
    out[idx] = static_cast<scalar_t>(box_pair_iou<acc_t>(b1 + 4 * (idx / m), b2 + 4 * (idx % m)));
  }
}

template <typename scalar_t>
__global__ void encode_boxes_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ p, int64_t n,
                                    BoxWeights<at::opmath_type<scalar_t>> wt, scalar_t* __restrict__ o) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(i, n) { encode_box<acc_t>(g + 4 * i, p + 4 * i, wt, o + 4 * i); }
}

template <typename scalar_t>
__global__ void decode_boxes_kernel(const scalar_t* __restrict__ c, const scalar_t* __restrict__ b, int64_t n,
                                    int64_t k, BoxWeights<at::opmath_type<scalar_t>> wt,
                                    at::opmath_type<scalar_t> clamp, scalar_t* __restrict__ o) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(idx, n * k) { decode_box<acc_t>(c + 4 * idx, b + 4 * (idx / k), wt, clamp, o + 4 * idx); }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou_args(boxes1_in, boxes2_in);
  const c10::cuda::CUDAGuard guard(boxes1_in.device());
  const auto boxes1 = boxes1_in.contiguous();
  const auto boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  auto out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cuda", [&] {
    box_iou_kernel<scalar_t><<<cuda::blocks_for(n * m), cuda::kThreadsPerBlock, 0, stream>>>(
        boxes1.const_data_ptr<scalar_t>(), boxes2.const_data_ptr<scalar_t>(), n, m,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor encode_boxes_cuda(const at::Tensor& reference_in, const at::Tensor& proposals_in,
                             at::ArrayRef<double> weights) {
  check_encode_boxes_args(reference_in, proposals_in, weights);
  const c10::cuda::CUDAGuard guard(reference_in.device());
  const auto ref = reference_in.contiguous();
  const auto prop = proposals_in.contiguous();
  const int64_t n = ref.size(0);
  auto out = at::empty({n, 4}, ref.options());
  if (n == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "encode_boxes_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    encode_boxes_kernel<scalar_t><<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
        ref.const_data_ptr<scalar_t>(), prop.const_data_ptr<scalar_t>(), n, box_weights<acc_t>(weights),
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor decode_boxes_cuda(const at::Tensor& rel_codes_in, const at::Tensor& boxes_in,
                             at::ArrayRef<double> weights, double scale_clamp) {
  check_decode_boxes_args(rel_codes_in, boxes_in, weights);
  const c10::cuda::CUDAGuard guard(rel_codes_in.device());
  const auto codes = rel_codes_in.contiguous();
  const auto boxes = boxes_in.to(codes.scalar_type()).contiguous();
  const int64_t n = codes.size(0), k = codes.size(1) / 4;
  auto out = at::empty_like(codes, at::MemoryFormat::Contiguous);
  if (n * k == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "decode_boxes_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    decode_boxes_kernel<scalar_t><<<cuda::blocks_for(n * k), cuda::kThreadsPerBlock, 0, stream>>>(
        codes.const_data_ptr<scalar_t>(), boxes.const_data_ptr<scalar_t>(), n, k, box_weights<acc_t>(weights),
        static_cast<acc_t>(scale_clamp), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("encode_boxes", &encode_boxes_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
}

}  // namespace pydet
