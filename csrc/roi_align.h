// RoIAlign geometry shared by the CPU and CUDA kernels, with torchvision's conventions:
//  * box corners are scaled by spatial_scale, minus half a pixel when aligned;
//  * without aligned, a RoI is at least 1x1 feature pixel;
//  * each bin averages a samples_y x samples_x grid of bilinear samples (sampling_ratio per side, or
//    ceil(roi size / pooled size) when sampling_ratio <= 0);
//  * a sample further than one pixel outside the map reads zero; otherwise it is clamped into it.
// Bilinear weights are separable: a sample reads rows (low, high) with weights (1 - ly, ly) and columns
// likewise, and it is outside the map exactly when its row or its column is.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <limits>
#include <c10/util/ArrayRef.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace pydet::roi_align {

// Adaptive sampling (sampling_ratio <= 0) takes ceil(bin size) samples per side. The cap only keeps
// the sample count of absurd boxes (1e30 pixels) in range: reaching it needs a bin wider than 65536
// feature pixels.
constexpr int64_t kMaxSamplesPerSide = 1 << 16;
// An explicit sampling_ratio above this is refused: 64 x 64 samples per bin already average far finer than
// any feature map needs, and a mistyped huge value would run for minutes.
constexpr int64_t kMaxSamplingRatio = 64;

template <typename T>
struct RoiGrid {
  T start_y, start_x;  // top-left corner in feature-map pixels
  T bin_h, bin_w;
  int64_t samples_y, samples_x;  // sampling points per bin along each axis; 0 pools nothing
  T count;                       // divisor of each bin's average: max(samples_y * samples_x, 1)
};

template <typename T>
C10_HOST_DEVICE inline int64_t samples_per_side(T roi_extent, int64_t pooled, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T n = ::ceil(roi_extent / static_cast<T>(pooled));
  // Written so that NaN, infinite and non-positive extents give 0 samples (torchvision's int cast of
  // NaN is undefined; a non-positive grid pools nothing there too).
  if (!(n >= T(1))) return 0;
  return n < static_cast<T>(kMaxSamplesPerSide) ? static_cast<int64_t>(n) : kMaxSamplesPerSide;
}

// `box` points at (x1, y1, x2, y2) in image pixels.
template <typename T>
C10_HOST_DEVICE inline RoiGrid<T> make_roi_grid(const T* box, T spatial_scale, int64_t pooled_h,
                                                int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoiGrid<T> g;
  g.start_x = box[0] * spatial_scale - offset;
  g.start_y = box[1] * spatial_scale - offset;
  T roi_w = box[2] * spatial_scale - offset - g.start_x;
  T roi_h = box[3] * spatial_scale - offset - g.start_y;
  if (!aligned) {  // torchvision forces malformed RoIs to be 1x1 (std::max keeps NaN, and so do we)
    roi_w = roi_w < T(1) ? T(1) : roi_w;
    roi_h = roi_h < T(1) ? T(1) : roi_h;
  }
  g.bin_h = roi_h / static_cast<T>(pooled_h);
  g.bin_w = roi_w / static_cast<T>(pooled_w);
  g.samples_y = samples_per_side(roi_h, pooled_h, sampling_ratio);
  g.samples_x = samples_per_side(roi_w, pooled_w, sampling_ratio);
  const int64_t n = g.samples_y * g.samples_x;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Coordinate of sample `i` of bin `p` along one axis (same operation order as torchvision).
template <typename T>
C10_HOST_DEVICE inline T sample_coord(T start, T bin, int64_t p, int64_t i, int64_t samples) {
  return start + static_cast<T>(p) * bin + (static_cast<T>(i) + T(0.5)) * bin / static_cast<T>(samples);
}

// The two taps of a sample along one axis of length `size`.
template <typename T>
struct AxisTaps {
  int64_t low, high;
  T w_low, w_high;
};

// False when the sample lies outside [-1, size] (or is NaN): it then contributes nothing.
template <typename T>
C10_HOST_DEVICE inline bool axis_taps(T coord, int64_t size, AxisTaps<T>& taps) {
  if (!(coord >= T(-1) && coord <= static_cast<T>(size)) || size <= 0) return false;
  if (coord <= T(0)) coord = T(0);
  taps.low = static_cast<int64_t>(coord);
  if (taps.low >= size - 1) {
    taps.low = taps.high = size - 1;
    coord = static_cast<T>(taps.low);
  } else {
    taps.high = taps.low + 1;
  }
  const T l = coord - static_cast<T>(taps.low);
  taps.w_low = T(1) - l;
  taps.w_high = l;
  return true;
}

// Merges the taps of one bin's samples into (index, summed weight) entries starting at `at`; returns
// the end (at most min(2 * samples, size) entries). The per-RoI axis tables of the CPU kernels and of the
// CUDA forward and atomic backward are built with it, and a bin's value is sum over its row entries r and
// column entries c of (w_r * w_c) * x[r, c], in that order, on both backends. Samples move
// monotonically along the axis (backwards when the bin size is negative) and taps are appended in that
// direction, so a repeated index can only be one of the last two entries.
template <typename acc_t>
C10_HOST_DEVICE inline int64_t fill_bin(acc_t start, acc_t bin, int64_t p, int64_t samples, int64_t size, int64_t at,
                                        int32_t* index, acc_t* weight) {
  const int64_t first = at;
  auto add = [&](int64_t i, acc_t w) {
    if (w == acc_t(0)) return;
    if (at > first && index[at - 1] == i) {
      weight[at - 1] += w;
    } else if (at - first > 1 && index[at - 2] == i) {
      weight[at - 2] += w;
    } else {
      index[at] = static_cast<int32_t>(i);
      weight[at] = w;
      ++at;
    }
  };
  const bool forward = !(bin < acc_t(0));
  for (int64_t s = 0; s < samples; ++s) {
    AxisTaps<acc_t> t;
    if (!axis_taps(sample_coord(start, bin, p, s, samples), size, t)) continue;
    if (forward) {
      add(t.low, t.w_low);
      add(t.high, t.w_high);
    } else {
      add(t.high, t.w_high);
      add(t.low, t.w_low);
    }
  }
  return at;
}

// ---- the gather form of the backward (CUDA, deterministic mode) ----
// A thread that owns input pixel (y, x) finds, for each RoI, the samples that put weight on its row and
// on its column; the weight of bin (ph, pw) on the pixel is then wy(ph) * wx(pw) / count.

// Where a RoI's samples can land: image -1 when it pools nothing; rows [y0, y1] and columns [x0, x1]
// (a superset: one pixel wider than the taps of the extreme samples).
struct RoiFootprint {
  int32_t image, level, y0, y1, x0, x1;
};

// Pixels [first, last] that the samples of one axis can touch; first > last when none can.
template <typename T>
C10_HOST_DEVICE inline void axis_footprint(T start, T bin, int64_t pooled, int64_t samples, int64_t size,
                                           int32_t& first, int32_t& last) {
  first = 1;
  last = 0;
  if (samples == 0 || size == 0) return;
  const T a = sample_coord(start, bin, int64_t(0), int64_t(0), samples);
  const T b = sample_coord(start, bin, pooled - 1, samples - 1, samples);
  const T lo = a < b ? a : b, hi = a < b ? b : a;
  if (!(lo <= static_cast<T>(size) && hi >= T(-1))) return;  // outside the map, or NaN
  const T from = ::floor(lo > T(0) ? lo : T(0)) - T(1);
  const T to = ::floor(hi < static_cast<T>(size) ? hi : static_cast<T>(size)) + T(2);
  first = from > T(0) ? static_cast<int32_t>(from) : 0;
  last = to < static_cast<T>(size - 1) ? static_cast<int32_t>(to) : static_cast<int32_t>(size - 1);
}

// Samples [first, last] of one axis (global index j = bin * samples + i) that may put weight on pixel
// `pos`: those with coordinates in (pos - 1, pos + 1), plus [-1, 0] for pixel 0 and [size - 1, size] for
// the last pixel, which clamping maps onto them. Widened by one sample; callers weigh each exactly.
template <typename T>
C10_HOST_DEVICE inline void candidate_samples(T start, T bin, int64_t pooled, int64_t samples, int64_t size,
                                              int64_t pos, int64_t& first, int64_t& last) {
  const int64_t total = pooled * samples;
  const T step = bin / static_cast<T>(samples);
  // Widened by a bound on sample_coord's rounding: when the step is below it (a near-empty box), samples
  // computed as exactly -1 or `size` would otherwise fall outside the solved range.
  const T magnitude = (start < T(0) ? -start : start) + (bin < T(0) ? -bin : bin) * static_cast<T>(pooled) +
                      static_cast<T>(size) + T(1);
  const T eps = T(8) * std::numeric_limits<T>::epsilon() * magnitude;
  const T lo = (pos == 0 ? T(-1) : static_cast<T>(pos - 1)) - eps;
  const T hi = (pos == size - 1 ? static_cast<T>(size) : static_cast<T>(pos + 1)) + eps;
  first = 0;
  last = -1;
  if (step == T(0)) {  // every sample sits at `start`
    if (start >= lo && start <= hi) last = total - 1;
    return;
  }
  T a = (lo - start) / step - T(0.5), b = (hi - start) / step - T(0.5);
  if (a > b) {
    const T swap = a;
    a = b;
    b = swap;
  }
  if (!(a <= static_cast<T>(total) && b >= T(-1))) return;  // out of range, or NaN
  const T from = ::floor(a) - T(1), to = ::ceil(b) + T(1);
  first = from > T(0) ? static_cast<int64_t>(from) : 0;
  last = to < static_cast<T>(total - 1) ? static_cast<int64_t>(to) : total - 1;
}

// Weight that sample j of an axis puts on pixel `pos` (0 when the sample lies outside the map).
template <typename T>
C10_HOST_DEVICE inline T sample_weight_on(T start, T bin, int64_t samples, int64_t size, int64_t j, int64_t pos) {
  AxisTaps<T> t;
  if (!axis_taps(sample_coord(start, bin, j / samples, j % samples, samples), size, t)) return T(0);
  return (t.low == pos ? t.w_low : T(0)) + (t.high == pos ? t.w_high : T(0));
}

// Visits the bins of one axis that put weight on pixel `pos`, in bin order, with the weight of each
// (summed over the bin's samples): visit(bin, weight). Zero weights are skipped.
template <typename T, typename Visit>
C10_HOST_DEVICE inline void for_pixel_bins(T start, T bin, int64_t pooled, int64_t samples, int64_t size, int64_t pos,
                                           Visit&& visit) {
  int64_t first, last;
  candidate_samples(start, bin, pooled, samples, size, pos, first, last);
  for (int64_t j = first; j <= last;) {
    const int64_t p = j / samples;
    T w = 0;
    for (; j <= last && j / samples == p; ++j) w += sample_weight_on(start, bin, samples, size, j, pos);
    if (w != T(0)) visit(p, w);
  }
}

// ---- argument checks shared by the CPU and CUDA kernels ----

inline void check_rois(const at::Tensor& rois) {
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5,
                    "rois must have shape [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  check_floating(rois, "rois");
}

inline void check_pooling(int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK_VALUE(pooled_h > 0 && pooled_w > 0, "output size must be positive, got (", pooled_h, ", ",
                    pooled_w, ")");
}

inline void check_scale(double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "spatial_scale must be finite and positive, got ", scale);
}

// features: one [N, C, H_l, W_l] map per level, all with the same N, C, dtype and device.
inline void check_features(at::TensorList features, const at::Tensor& rois, c10::ArrayRef<double> scales) {
  TORCH_CHECK_VALUE(!features.empty(), "features must hold at least one feature map");
  TORCH_CHECK_VALUE(scales.size() == features.size(), "spatial_scales must have one entry per feature map (",
                    features.size(), "), got ", scales.size());
  const auto& first = features[0];
  for (size_t l = 0; l < features.size(); ++l) {
    const auto& f = features[l];
    TORCH_CHECK_VALUE(f.dim() == 4, "input must have shape [N, C, H, W], got ", f.sizes());
    check_floating(f, "input");
    TORCH_CHECK_VALUE(f.scalar_type() == first.scalar_type() && f.device() == first.device() &&
                          f.size(0) == first.size(0) && f.size(1) == first.size(1),
                      "feature maps must share dtype, device, batch size and channels; level ", l, " is ",
                      f.scalar_type(), " ", f.sizes(), " on ", f.device(), ", level 0 is ", first.scalar_type(),
                      " ", first.sizes(), " on ", first.device());
    TORCH_CHECK_VALUE(f.size(2) < (int64_t(1) << 31) && f.size(3) < (int64_t(1) << 31),
                      "feature map height and width must be below 2^31, got ", f.sizes());
    check_scale(scales[l]);
  }
  check_rois(rois);
  check_same_device(first, "input", rois, "rois");
}

inline void check_levels(const at::Tensor& levels, const at::Tensor& rois) {
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.size(0) == rois.size(0),
                    "levels must have shape [K] with K = rois.size(0) = ", rois.size(0), ", got ", levels.sizes());
  TORCH_CHECK_VALUE(levels.scalar_type() == at::kLong, "levels must be int64, got ", levels.scalar_type());
  check_same_device(levels, "levels", rois, "rois");
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& rois, int64_t channels, int64_t pooled_h,
                       int64_t pooled_w) {
  check_floating(grad, "grad");
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                        grad.size(2) == pooled_h && grad.size(3) == pooled_w,
                    "grad must have shape [K, C, pooled_height, pooled_width] = [", rois.size(0), ", ", channels,
                    ", ", pooled_h, ", ", pooled_w, "], got ", grad.sizes());
  check_same_device(grad, "grad", rois, "rois");
}

inline void check_feature_shapes(int64_t batch_size, int64_t channels, c10::ArrayRef<int64_t> heights,
                                 c10::ArrayRef<int64_t> widths, c10::ArrayRef<double> scales) {
  TORCH_CHECK_VALUE(batch_size >= 0 && channels >= 0, "batch_size and channels must be non-negative, got ",
                    batch_size, " and ", channels);
  TORCH_CHECK_VALUE(!heights.empty() && heights.size() == widths.size() && heights.size() == scales.size(),
                    "heights, widths and spatial_scales must have one entry per level, got ", heights.size(),
                    ", ", widths.size(), " and ", scales.size());
  for (size_t l = 0; l < heights.size(); ++l) {
    TORCH_CHECK_VALUE(heights[l] >= 0 && widths[l] >= 0 && heights[l] < (int64_t(1) << 31) &&
                          widths[l] < (int64_t(1) << 31),
                      "feature map height and width must be in [0, 2^31), got ", heights[l], " and ", widths[l]);
    check_scale(scales[l]);
  }
}

// Everything a forward entry point (CPU or CUDA) checks; levels is null for the single-level op.
inline void check_forward_args(at::TensorList features, const at::Tensor& rois, const at::Tensor* levels,
                               c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                               int64_t sampling_ratio) {
  check_features(features, rois, scales);
  if (levels) check_levels(*levels, rois);
  check_pooling(pooled_h, pooled_w);
  TORCH_CHECK_VALUE(sampling_ratio <= kMaxSamplingRatio, "sampling_ratio must be at most ", kMaxSamplingRatio,
                    " samples per bin side (or <= 0 for adaptive sampling), got ", sampling_ratio);
}

// Everything a backward entry point (CPU or CUDA) checks; levels is null for the single-level op.
inline void check_backward_args(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor* levels,
                                c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                int64_t batch_size, int64_t channels, c10::ArrayRef<int64_t> heights,
                                c10::ArrayRef<int64_t> widths) {
  check_rois(rois);
  if (levels) check_levels(*levels, rois);
  check_pooling(pooled_h, pooled_w);
  check_grad(grad, rois, channels, pooled_h, pooled_w);
  check_feature_shapes(batch_size, channels, heights, widths, scales);
}

}  // namespace pydet::roi_align
