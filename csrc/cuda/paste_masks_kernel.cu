// CUDA mask pasting (detectron2 _do_paste_mask semantics, see ../paste_masks.h). The output is
// zeroed with one memset; then each block covers kRowsPerBlock image rows of one mask and its
// threads fill only the pixels of the box's range in those rows. Boxes stay on the device (no
// host synchronisation): every block derives its mask's pixel range itself.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../paste_masks.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

constexpr int kColumnsPerBlock = 32;
constexpr int kRowsPerBlock = 8;

template <typename scalar_t, typename out_t>
__global__ void paste_masks_kernel(const scalar_t* __restrict__ masks, const double* __restrict__ boxes, int64_t n,
                                   int64_t mask_h, int64_t mask_w, int64_t height, int64_t width,
                                   at::opmath_type<scalar_t> threshold, out_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t y = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const double* b = boxes + 4 * i;
    const PasteAxis ay = paste_axis(b[1], b[3], mask_h, height);
    if (y < ay.first || y >= ay.last) continue;
    const PasteAxis ax = paste_axis(b[0], b[2], mask_w, width);
    const PasteTaps<acc_t> ty = paste_taps<acc_t>(ay, y, mask_h);
    const scalar_t* mask = masks + i * mask_h * mask_w;
    const scalar_t* low_row = mask + ty.low * mask_w;
    const scalar_t* high_row = mask + ty.high * mask_w;
    out_t* out_row = out + (i * height + y) * width;
    for (int64_t x = ax.first + threadIdx.x; x < ax.last; x += kColumnsPerBlock) {
      const PasteTaps<acc_t> tx = paste_taps<acc_t>(ax, x, mask_w);
      out_row[x] = paste_output<out_t>(paste_sample<acc_t>(low_row, high_row, ty, tx), threshold);
    }
  }
}

at::Tensor paste_masks_cuda(const at::Tensor& masks_in, const at::Tensor& boxes_in, int64_t height,
                            int64_t width, std::optional<double> threshold) {
  check_paste_masks_args(masks_in, boxes_in, height, width, threshold);
  const c10::cuda::CUDAGuard guard(masks_in.device());
  const auto masks = masks_in.contiguous();
  const auto boxes = boxes_in.to(at::kDouble).contiguous();
  const int64_t n = masks.size(0);
  auto out = at::zeros({n, height, width}, masks.options().dtype(threshold ? at::kBool : masks.scalar_type()));
  if (out.numel() == 0) return out;
  TORCH_CHECK_VALUE(cuda::ceil_div(height, kRowsPerBlock) <= std::numeric_limits<int32_t>::max(),
                    "height is too large for one launch: ", height);
  const dim3 block(kColumnsPerBlock, kRowsPerBlock);
  const dim3 grid(static_cast<unsigned int>(cuda::ceil_div(height, kRowsPerBlock)),
                  static_cast<unsigned int>(std::min<int64_t>(n, 65535)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto m = masks.const_data_ptr<scalar_t>();
    const auto b = boxes.const_data_ptr<double>();
    const int64_t mh = masks.size(1), mw = masks.size(2);
    if (threshold) {
      paste_masks_kernel<scalar_t, bool><<<grid, block, 0, stream>>>(m, b, n, mh, mw, height, width,
                                                                     static_cast<acc_t>(*threshold),
                                                                     out.mutable_data_ptr<bool>());
    } else {
      paste_masks_kernel<scalar_t, scalar_t><<<grid, block, 0, stream>>>(m, b, n, mh, mw, height, width, acc_t(0),
                                                                         out.mutable_data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CUDA, m) { m.impl("paste_masks", &paste_masks_cuda); }

}  // namespace pydet
