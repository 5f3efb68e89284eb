// CPU kernels for pairwise IoU and the R-CNN box coder (torchvision BoxCoder semantics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>

#include "../boxes.h"

namespace pydet {
namespace {

using std::exp;
using std::log;

at::Tensor box_iou_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_box_iou_args(boxes1_in, boxes2_in);
  const auto boxes1 = boxes1_in.contiguous();
  const auto boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  auto out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* b1 = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b2 = boxes2.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / m), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < m; ++j) {
          o[i * m + j] = static_cast<scalar_t>(box_pair_iou<acc_t>(b1 + 4 * i, b2 + 4 * j));
        }
      }
    });
  });
  return out;
}

at::Tensor encode_boxes_cpu(const at::Tensor& reference_in, const at::Tensor& proposals_in,
                            at::ArrayRef<double> weights) {
  check_encode_boxes_args(reference_in, proposals_in, weights);
  const auto ref = reference_in.contiguous();
  const auto prop = proposals_in.contiguous();
  const int64_t n = ref.size(0);
  auto out = at::empty({n, 4}, ref.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "encode_boxes_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto wt = box_weights<acc_t>(weights);
    const scalar_t* g = ref.const_data_ptr<scalar_t>();
    const scalar_t* p = prop.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) encode_box<acc_t>(g + 4 * i, p + 4 * i, wt, o + 4 * i);
    });
  });
  return out;
}

at::Tensor decode_boxes_cpu(const at::Tensor& rel_codes_in, const at::Tensor& boxes_in,
                            at::ArrayRef<double> weights, double scale_clamp) {
  check_decode_boxes_args(rel_codes_in, boxes_in, weights);
  const auto codes = rel_codes_in.contiguous();
  const auto boxes = boxes_in.to(codes.scalar_type()).contiguous();
  const int64_t n = codes.size(0), k = codes.size(1) / 4;
  auto out = at::empty_like(codes, at::MemoryFormat::Contiguous);
  if (n * k == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "decode_boxes_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto wt = box_weights<acc_t>(weights);
    const acc_t clamp = static_cast<acc_t>(scale_clamp);
    const scalar_t* c = codes.const_data_ptr<scalar_t>();
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n * k, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) decode_box<acc_t>(c + 4 * idx, b + 4 * (idx / k), wt, clamp, o + 4 * idx);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("encode_boxes", &encode_boxes_cpu);
  m.impl("decode_boxes", &decode_boxes_cpu);
}

}  // namespace pydet
