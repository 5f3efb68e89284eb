// CUDA kernels for pairwise IoU and the R-CNN box coder (torchvision BoxCoder semantics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

template <typename scalar_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2, int64_t n,
                               int64_t m, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(idx, n * m) {
    const int64_t i = idx / m, j = idx % m;
    const acc_t ax1 = b1[4 * i], ay1 = b1[4 * i + 1], ax2 = b1[4 * i + 2], ay2 = b1[4 * i + 3];
    const acc_t bx1 = b2[4 * j], by1 = b2[4 * j + 1], bx2 = b2[4 * j + 2], by2 = b2[4 * j + 3];
    const acc_t area_a = (ax2 - ax1) * (ay2 - ay1);
    const acc_t area_b = (bx2 - bx1) * (by2 - by1);
    const acc_t w = max(min(ax2, bx2) - max(ax1, bx1), acc_t(0));
    const acc_t h = max(min(ay2, by2) - max(ay1, by1), acc_t(0));
    const acc_t inter = w * h;
    out[idx] = static_cast<scalar_t>(inter / (area_a + area_b - inter));
  }
}

template <typename scalar_t>
__global__ void encode_boxes_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ p, int64_t n,
                                    at::opmath_type<scalar_t> wx, at::opmath_type<scalar_t> wy,
                                    at::opmath_type<scalar_t> ww, at::opmath_type<scalar_t> wh,
                                    scalar_t* __restrict__ o) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(i, n) {
    const acc_t ex_w = acc_t(p[4 * i + 2]) - acc_t(p[4 * i]);
    const acc_t ex_h = acc_t(p[4 * i + 3]) - acc_t(p[4 * i + 1]);
    const acc_t ex_cx = acc_t(p[4 * i]) + acc_t(0.5) * ex_w;
    const acc_t ex_cy = acc_t(p[4 * i + 1]) + acc_t(0.5) * ex_h;
    const acc_t gt_w = acc_t(g[4 * i + 2]) - acc_t(g[4 * i]);
    const acc_t gt_h = acc_t(g[4 * i + 3]) - acc_t(g[4 * i + 1]);
    const acc_t gt_cx = acc_t(g[4 * i]) + acc_t(0.5) * gt_w;
    const acc_t gt_cy = acc_t(g[4 * i + 1]) + acc_t(0.5) * gt_h;
    o[4 * i] = static_cast<scalar_t>(wx * (gt_cx - ex_cx) / ex_w);
    o[4 * i + 1] = static_cast<scalar_t>(wy * (gt_cy - ex_cy) / ex_h);
    o[4 * i + 2] = static_cast<scalar_t>(ww * log(gt_w / ex_w));
    o[4 * i + 3] = static_cast<scalar_t>(wh * log(gt_h / ex_h));
  }
}

template <typename scalar_t>
__global__ void decode_boxes_kernel(const scalar_t* __restrict__ c, const scalar_t* __restrict__ b, int64_t n,
                                    int64_t k, at::opmath_type<scalar_t> wx, at::opmath_type<scalar_t> wy,
                                    at::opmath_type<scalar_t> ww, at::opmath_type<scalar_t> wh,
                                    at::opmath_type<scalar_t> clamp, scalar_t* __restrict__ o) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(idx, n * k) {
    const int64_t i = idx / k;
    const acc_t w = acc_t(b[4 * i + 2]) - acc_t(b[4 * i]);
    const acc_t h = acc_t(b[4 * i + 3]) - acc_t(b[4 * i + 1]);
    const acc_t cx = acc_t(b[4 * i]) + acc_t(0.5) * w;
    const acc_t cy = acc_t(b[4 * i + 1]) + acc_t(0.5) * h;
    const scalar_t* cj = c + idx * 4;
    const acc_t dx = acc_t(cj[0]) / wx, dy = acc_t(cj[1]) / wy;
    acc_t dw = acc_t(cj[2]) / ww, dh = acc_t(cj[3]) / wh;
    dw = dw > clamp ? clamp : dw;  // keeps NaN, like torch.clamp
    dh = dh > clamp ? clamp : dh;
    const acc_t pcx = dx * w + cx, pcy = dy * h + cy;
    const acc_t half_w = acc_t(0.5) * (exp(dw) * w), half_h = acc_t(0.5) * (exp(dh) * h);
    scalar_t* oj = o + idx * 4;
    oj[0] = static_cast<scalar_t>(pcx - half_w);
    oj[1] = static_cast<scalar_t>(pcy - half_h);
    oj[2] = static_cast<scalar_t>(pcx + half_w);
    oj[3] = static_cast<scalar_t>(pcy + half_h);
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_boxes(boxes1_in, "boxes1");
  check_boxes(boxes2_in, "boxes2");
  check_same_dtype(boxes1_in, "boxes1", boxes2_in, "boxes2");
  check_same_device(boxes1_in, "boxes1", boxes2_in, "boxes2");
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
  check_boxes(reference_in, "reference_boxes");
  check_boxes(proposals_in, "proposals");
  check_same_dtype(reference_in, "reference_boxes", proposals_in, "proposals");
  check_same_device(reference_in, "reference_boxes", proposals_in, "proposals");
  TORCH_CHECK_VALUE(reference_in.size(0) == proposals_in.size(0),
                    "reference_boxes and proposals must have the same number of rows, got ",
                    reference_in.size(0), " and ", proposals_in.size(0));
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must have 4 elements, got ", weights.size());
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
        ref.const_data_ptr<scalar_t>(), prop.const_data_ptr<scalar_t>(), n, acc_t(weights[0]),
        acc_t(weights[1]), acc_t(weights[2]), acc_t(weights[3]), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor decode_boxes_cuda(const at::Tensor& rel_codes_in, const at::Tensor& boxes_in,
                             at::ArrayRef<double> weights, double scale_clamp) {
  TORCH_CHECK_VALUE(rel_codes_in.dim() == 2 && rel_codes_in.size(1) % 4 == 0,
                    "rel_codes must have shape [N, K*4], got ", rel_codes_in.sizes());
  check_floating(rel_codes_in, "rel_codes");
  check_boxes(boxes_in, "boxes");
  check_same_device(rel_codes_in, "rel_codes", boxes_in, "boxes");
  TORCH_CHECK_VALUE(rel_codes_in.size(0) == boxes_in.size(0),
                    "rel_codes and boxes must have the same number of rows, got ", rel_codes_in.size(0),
                    " and ", boxes_in.size(0));
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must have 4 elements, got ", weights.size());
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
        codes.const_data_ptr<scalar_t>(), boxes.const_data_ptr<scalar_t>(), n, k, acc_t(weights[0]),
        acc_t(weights[1]), acc_t(weights[2]), acc_t(weights[3]), acc_t(scale_clamp),
        out.mutable_data_ptr<scalar_t>());
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
