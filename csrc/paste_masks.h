// Mask pasting shared by the CPU and CUDA kernels: argument checks and the sampling arithmetic.
//
// Semantics are detectron2's _do_paste_mask evaluated over the whole image (its GPU path):
// F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False) with
// grid_x = (x + 0.5 - x0) / (x1 - x0) * 2 - 1 for pixel column x. Unnormalised, pixel x samples mask
// column u = (x + 0.5 - x0) * w / (x1 - x0) - 0.5, and a tap outside [0, w) contributes nothing, so
// pixels whose centre lies up to half a mask cell outside the box still get a partial value.
// Boxes that are empty (x1 <= x0 or y1 <= y0) or not finite paste nothing.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>

#include "common.h"

namespace pydet {

inline void check_paste_masks_args(const at::Tensor& masks, const at::Tensor& boxes, int64_t height,
                                   int64_t width, std::optional<double> threshold) {
  TORCH_CHECK_VALUE(masks.dim() == 3, "masks must have shape [N, h, w], got ", masks.sizes());
  check_floating(masks, "masks");
  check_boxes(boxes, "boxes");
  check_same_device(masks, "masks", boxes, "boxes");
  TORCH_CHECK_VALUE(masks.size(0) == boxes.size(0), "masks and boxes must have the same length, got ",
                    masks.size(0), " and ", boxes.size(0));
  TORCH_CHECK_VALUE(masks.size(0) == 0 || (masks.size(1) > 0 && masks.size(2) > 0),
                    "masks must have a non-empty [h, w], got ", masks.sizes());
  TORCH_CHECK_VALUE(height >= 0 && width >= 0, "image size must be non-negative, got (", height, ", ", width, ")");
  // Pixels outside every box are 0 and must stay false, so only positive thresholds make sense.
  TORCH_CHECK_VALUE(!threshold.has_value() || *threshold > 0, "threshold must be > 0 (or None), got ",
                    threshold.value_or(0));
}

// One side of a box mapped onto the mask: image pixel p samples mask coordinate
// (p + 0.5 - start) * scale - 0.5, and only pixels in [first, last) can be non-zero.
struct PasteAxis {
  double start = 0, scale = 0;
  int64_t first = 0, last = 0;
};

C10_HOST_DEVICE inline PasteAxis paste_axis(double start, double end, int64_t mask_size, int64_t image_size) {
  PasteAxis axis;
  const double extent = end - start;
  // Also false for NaN and infinite sides, which paste nothing.
  if (!(extent > 0 && extent < std::numeric_limits<double>::infinity())) return axis;
  axis.start = start;
  axis.scale = static_cast<double>(mask_size) / extent;
  // A sample in (-1, mask_size) has a tap inside the mask. The range is one pixel wider than that
  // on each side so rounding can never drop a pixel; the extra pixels sample exactly 0.
  const double half_cell = 0.5 / axis.scale;
  const double first = floor(start - half_cell - 0.5);
  const double last = ceil(end + half_cell - 0.5) + 1;
  const double size = static_cast<double>(image_size);
  axis.first = static_cast<int64_t>(first < 0 ? 0 : (first > size ? size : first));
  axis.last = static_cast<int64_t>(last < 0 ? 0 : (last > size ? size : last));
  return axis;
}

// A product rounded on its own. Host code is compiled with -ffp-contract=off, but nvcc contracts
// a * b + c into a fused multiply-add by default, which rounds once instead of twice: without this,
// a CUDA paste could differ from the CPU paste (and from paste_masks_rle, which always runs on the
// host) by one ulp, and flip a pixel sitting on the threshold.
template <typename T>
C10_HOST_DEVICE inline T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "mul_rn takes float or double");
  if constexpr (std::is_same_v<T, float>) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

// The two bilinear taps of one pixel along one axis. A tap outside the mask gets weight 0 and
// reads the other tap's (valid) index, which keeps loads in bounds without a branch per pixel.
template <typename acc_t>
struct PasteTaps {
  int64_t low = 0, high = 0;
  acc_t low_weight = 0, high_weight = 0;
};

template <typename acc_t>
C10_HOST_DEVICE inline PasteTaps<acc_t> paste_taps(const PasteAxis& axis, int64_t pixel, int64_t mask_size) {
  PasteTaps<acc_t> taps;
  const double u = mul_rn(static_cast<double>(pixel) + 0.5 - axis.start, axis.scale) - 0.5;
  if (!(u > -1.0 && u < static_cast<double>(mask_size))) return taps;
  const double u_floor = floor(u);
  const int64_t i = static_cast<int64_t>(u_floor);
  const acc_t frac = static_cast<acc_t>(u - u_floor);
  const bool low_inside = i >= 0, high_inside = i + 1 < mask_size;
  taps.low = low_inside ? i : i + 1;
  taps.high = high_inside ? i + 1 : i;
  taps.low_weight = low_inside ? acc_t(1) - frac : acc_t(0);
  taps.high_weight = high_inside ? frac : acc_t(0);
  return taps;
}

template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t paste_sample(const scalar_t* mask_low_row, const scalar_t* mask_high_row,
                                          const PasteTaps<acc_t>& ty, const PasteTaps<acc_t>& tx) {
  const acc_t low = mul_rn(tx.low_weight, static_cast<acc_t>(mask_low_row[tx.low])) +
                    mul_rn(tx.high_weight, static_cast<acc_t>(mask_low_row[tx.high]));
  const acc_t high = mul_rn(tx.low_weight, static_cast<acc_t>(mask_high_row[tx.low])) +
                     mul_rn(tx.high_weight, static_cast<acc_t>(mask_high_row[tx.high]));
  return mul_rn(ty.low_weight, low) + mul_rn(ty.high_weight, high);
}

// The output element: the probability itself, or whether it reaches the threshold.
template <typename out_t, typename acc_t>
C10_HOST_DEVICE inline out_t paste_output(acc_t value, acc_t threshold) {
  if constexpr (std::is_same_v<out_t, bool>) {
    return value >= threshold;
  } else {
    return static_cast<out_t>(value);
  }
}

}  // namespace pydet
