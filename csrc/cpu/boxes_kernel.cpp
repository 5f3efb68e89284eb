// CPU kernels for pairwise IoU and the R-CNN box coder (torchvision BoxCoder semantics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>

#include "../common.h"

namespace pydet {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_boxes(boxes1_in, "boxes1");
  check_boxes(boxes2_in, "boxes2");
  check_same_dtype(boxes1_in, "boxes1", boxes2_in, "boxes2");
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
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(m, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t ax1 = b1[4 * i], ay1 = b1[4 * i + 1], ax2 = b1[4 * i + 2], ay2 = b1[4 * i + 3];
        const acc_t area_a = (ax2 - ax1) * (ay2 - ay1);
        for (int64_t j = 0; j < m; ++j) {
          const acc_t bx1 = b2[4 * j], by1 = b2[4 * j + 1], bx2 = b2[4 * j + 2], by2 = b2[4 * j + 3];
          const acc_t area_b = (bx2 - bx1) * (by2 - by1);
          const acc_t w = std::max<acc_t>(std::min(ax2, bx2) - std::max(ax1, bx1), 0);
          const acc_t h = std::max<acc_t>(std::min(ay2, by2) - std::max(ay1, by1), 0);
          const acc_t inter = w * h;
          o[i * m + j] = static_cast<scalar_t>(inter / (area_a + area_b - inter));
        }
      }
    });
  });
  return out;
}

at::Tensor encode_boxes_cpu(const at::Tensor& reference_in, const at::Tensor& proposals_in,
                            at::ArrayRef<double> weights) {
  check_boxes(reference_in, "reference_boxes");
  check_boxes(proposals_in, "proposals");
  check_same_dtype(reference_in, "reference_boxes", proposals_in, "proposals");
  TORCH_CHECK_VALUE(reference_in.size(0) == proposals_in.size(0),
                    "reference_boxes and proposals must have the same number of rows, got ",
                    reference_in.size(0), " and ", proposals_in.size(0));
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must have 4 elements, got ", weights.size());
  const auto ref = reference_in.contiguous();
  const auto prop = proposals_in.contiguous();
  const int64_t n = ref.size(0);
  auto out = at::empty({n, 4}, ref.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "encode_boxes_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t wx = weights[0], wy = weights[1], ww = weights[2], wh = weights[3];
    const scalar_t* g = ref.const_data_ptr<scalar_t>();
    const scalar_t* p = prop.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
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
        o[4 * i + 2] = static_cast<scalar_t>(ww * std::log(gt_w / ex_w));
        o[4 * i + 3] = static_cast<scalar_t>(wh * std::log(gt_h / ex_h));
      }
    });
  });
  return out;
}

at::Tensor decode_boxes_cpu(const at::Tensor& rel_codes_in, const at::Tensor& boxes_in,
                            at::ArrayRef<double> weights, double scale_clamp) {
  TORCH_CHECK_VALUE(rel_codes_in.dim() == 2 && rel_codes_in.size(1) % 4 == 0,
                    "rel_codes must have shape [N, K*4], got ", rel_codes_in.sizes());
  check_floating(rel_codes_in, "rel_codes");
  check_boxes(boxes_in, "boxes");
  TORCH_CHECK_VALUE(rel_codes_in.size(0) == boxes_in.size(0),
                    "rel_codes and boxes must have the same number of rows, got ", rel_codes_in.size(0),
                    " and ", boxes_in.size(0));
  TORCH_CHECK_VALUE(weights.size() == 4, "weights must have 4 elements, got ", weights.size());
  const auto codes = rel_codes_in.contiguous();
  const auto boxes = boxes_in.to(codes.scalar_type()).contiguous();
  const int64_t n = codes.size(0), k = codes.size(1) / 4;
  auto out = at::empty_like(codes, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codes.scalar_type(), "decode_boxes_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t wx = weights[0], wy = weights[1], ww = weights[2], wh = weights[3];
    const acc_t clamp = static_cast<acc_t>(scale_clamp);
    const scalar_t* c = codes.const_data_ptr<scalar_t>();
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t w = acc_t(b[4 * i + 2]) - acc_t(b[4 * i]);
        const acc_t h = acc_t(b[4 * i + 3]) - acc_t(b[4 * i + 1]);
        const acc_t cx = acc_t(b[4 * i]) + acc_t(0.5) * w;
        const acc_t cy = acc_t(b[4 * i + 1]) + acc_t(0.5) * h;
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t* cj = c + (i * k + j) * 4;
          const acc_t dx = acc_t(cj[0]) / wx, dy = acc_t(cj[1]) / wy;
          // dw/dh first: std::min(NaN, clamp) returns NaN, matching torch.clamp.
          const acc_t dw = std::min(acc_t(cj[2]) / ww, clamp), dh = std::min(acc_t(cj[3]) / wh, clamp);
          const acc_t pcx = dx * w + cx, pcy = dy * h + cy;
          const acc_t half_w = acc_t(0.5) * (std::exp(dw) * w), half_h = acc_t(0.5) * (std::exp(dh) * h);
          scalar_t* oj = o + (i * k + j) * 4;
          oj[0] = static_cast<scalar_t>(pcx - half_w);
          oj[1] = static_cast<scalar_t>(pcy - half_h);
          oj[2] = static_cast<scalar_t>(pcx + half_w);
          oj[3] = static_cast<scalar_t>(pcy + half_h);
        }
      }
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
