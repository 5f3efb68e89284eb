// CUDA RoIAlign (torchvision semantics), single- and multi-level.
//
// Forward: one block per RoI (and range of channels) that builds the RoI's axis tables once, then pools
// every channel from them (below). Backward: by default the same blocks scatter into the input gradient
// with one atomicAdd per merged tap (float32 accumulation for half/bfloat16). With
// torch.use_deterministic_algorithms(True) it gathers instead: one thread per input element (for a
// block of channels) sums the contributions of the RoIs whose samples touch it, in RoI order, so the
// result is bit-for-bit reproducible. A thread block culls the RoIs against its tile first.
//
// A RoI whose batch index is out of range pools NaN and passes no gradient (no device assert, no sync).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../roi_align.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

using roi_align::AxisTaps;
using roi_align::RoiFootprint;
using roi_align::RoiGrid;

constexpr int kMaxLevels = 8;

// The feature maps (or their gradients) of every level, passed to kernels by value.
template <typename T, typename acc_t>
struct Levels {
  T* data[kMaxLevels];
  int64_t height[kMaxLevels], width[kMaxLevels];
  acc_t scale[kMaxLevels];
  int64_t tile_begin[kMaxLevels + 1];  // deterministic backward: first thread block of each level
  int count;
};

template <typename T, typename acc_t>
Levels<T, acc_t> make_levels(const std::vector<T*>& data, c10::ArrayRef<int64_t> heights,
                             c10::ArrayRef<int64_t> widths, c10::ArrayRef<double> scales) {
  TORCH_CHECK_VALUE(data.size() <= kMaxLevels, "at most ", kMaxLevels, " feature maps are supported on CUDA, got ",
                    data.size());
  Levels<T, acc_t> levels{};
  levels.count = static_cast<int>(data.size());
  for (size_t l = 0; l < data.size(); ++l) {
    levels.data[l] = data[l];
    TORCH_CHECK_VALUE(heights[l] * widths[l] < (int64_t(1) << 31), "feature maps on CUDA must have fewer than 2^31 "
                      "pixels per plane (32-bit offsets), level ", l, " has ", heights[l], " x ", widths[l]);
    levels.height[l] = heights[l];
    levels.width[l] = widths[l];
    levels.scale[l] = static_cast<acc_t>(scales[l]);
  }
  return levels;
}

// The RoI's batch index, or -1 when rois[:, 0] is not an integer in [0, N). No device assert (it would
// leave the CUDA context unusable for the rest of the process) and no host sync: such a RoI pools NaN in
// the forward and passes no gradient back. The Python wrapper raises a ValueError for them beforehand.
template <typename acc_t>
__device__ __forceinline__ int64_t batch_index(const acc_t* roi, int64_t batch_size) {
  const acc_t b = roi[0];
  return b >= acc_t(0) && b < static_cast<acc_t>(batch_size) && b == floor(b) ? static_cast<int64_t>(b) : -1;
}

__device__ __forceinline__ int64_t roi_level(const int64_t* levels, int64_t k, int count) {
  const int64_t level = levels == nullptr ? 0 : levels[k];
  return level >= 0 && level < count ? level : -1;
}

// ---- per-RoI axis tables in shared memory (forward and atomic backward) ----
// A block pools one RoI (for a range of channels). Its threads first build the RoI's row and column
// tables with roi_align::fill_bin, the CPU kernel's code: each bin's taps merged into (index, weight)
// entries, every sample's taps and weights computed once for all channels. Then each thread takes
// (channel, bin) pairs and sums (w_r * w_c) * x[r, c] in the CPU kernel's order, so that (without FMA
// contraction) the forward rounds exactly as the CPU one. Tables that do not fit (more than kMaxPooled
// bins per side, or huge adaptive sample counts) fall back to visiting the samples per output,
// torchvision's way (the same value up to rounding).

constexpr int kPoolThreads = 256;
constexpr int kMaxPooled = 64;       // bins per side held in the tables
constexpr int kTableEntries = 1024;  // entries per axis: 8 KiB (float) or 12 KiB (double)

template <typename acc_t>
struct AxisTable {
  int32_t index[kTableEntries];
  acc_t weight[kTableEntries];
  int32_t end[kMaxPooled];  // bin p's entries are [p * stride, end[p])
};

template <typename acc_t>
struct RoiPlan {
  RoiGrid<acc_t> grid;
  int64_t height, width, stride_y, stride_x;
  bool tabled;
};

template <typename acc_t>
__device__ __forceinline__ RoiPlan<acc_t> plan_roi(const acc_t* roi, acc_t scale, int64_t height, int64_t width,
                                                   int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                                   bool aligned) {
  RoiPlan<acc_t> p;
  p.grid = roi_align::make_roi_grid<acc_t>(roi + 1, scale, pooled_h, pooled_w, sampling_ratio, aligned);
  p.height = height;
  p.width = width;
  p.stride_y = min(2 * p.grid.samples_y, height);
  p.stride_x = min(2 * p.grid.samples_x, width);
  p.tabled = pooled_h <= kMaxPooled && pooled_w <= kMaxPooled && pooled_h * p.stride_y <= kTableEntries &&
             pooled_w * p.stride_x <= kTableEntries;
  return p;
}

// Called by every thread of the block (it ends with a barrier) when plan.tabled.
template <typename acc_t>
__device__ __forceinline__ void build_tables(const RoiPlan<acc_t>& plan, int64_t pooled_h, int64_t pooled_w,
                                             AxisTable<acc_t>& rows, AxisTable<acc_t>& cols) {
  const RoiGrid<acc_t>& g = plan.grid;
  for (int64_t p = threadIdx.x; p < pooled_h + pooled_w; p += blockDim.x) {
    if (p < pooled_h) {
      rows.end[p] = static_cast<int32_t>(roi_align::fill_bin(g.start_y, g.bin_h, p, g.samples_y, plan.height,
                                                             p * plan.stride_y, rows.index, rows.weight));
    } else {
      const int64_t q = p - pooled_h;
      cols.end[q] = static_cast<int32_t>(roi_align::fill_bin(g.start_x, g.bin_w, q, g.samples_x, plan.width,
                                                             q * plan.stride_x, cols.index, cols.weight));
    }
  }
  __syncthreads();
}

// Visits the merged taps of bin (ph, pw): visit(offset in the plane, weight). 32-bit offsets: a plane
// has fewer than 2^31 elements (checked on the host).
template <typename acc_t, typename Visit>
__device__ __forceinline__ void for_table_taps(const AxisTable<acc_t>& rows, const AxisTable<acc_t>& cols,
                                               const RoiPlan<acc_t>& plan, int ph, int pw, Visit&& visit) {
  const int width = static_cast<int>(plan.width);
  const int rb = ph * static_cast<int>(plan.stride_y), re = rows.end[ph];
  const int cb = pw * static_cast<int>(plan.stride_x), ce = cols.end[pw];
  for (int ri = rb; ri < re; ++ri) {
    const int row = rows.index[ri] * width;
    const acc_t wr = rows.weight[ri];
    for (int ci = cb; ci < ce; ++ci) visit(row + cols.index[ci], wr * cols.weight[ci]);
  }
}

// The fallback: every sample's four taps (zero-weight taps skipped, as in fill_bin: 0 * inf must not
// turn a finite sum into NaN). visit(offset, weight).
template <typename acc_t, typename Visit>
__device__ __forceinline__ void for_sample_taps(const RoiPlan<acc_t>& plan, int64_t ph, int64_t pw, Visit&& visit) {
  const RoiGrid<acc_t>& g = plan.grid;
  const int width = static_cast<int>(plan.width);
  for (int64_t iy = 0; iy < g.samples_y; ++iy) {
    AxisTaps<acc_t> ty;
    if (!roi_align::axis_taps(roi_align::sample_coord(g.start_y, g.bin_h, ph, iy, g.samples_y), plan.height, ty)) {
      continue;
    }
    for (int64_t ix = 0; ix < g.samples_x; ++ix) {
      AxisTaps<acc_t> tx;
      if (!roi_align::axis_taps(roi_align::sample_coord(g.start_x, g.bin_w, pw, ix, g.samples_x), plan.width, tx)) {
        continue;
      }
      const int yl = static_cast<int>(ty.low) * width, yh = static_cast<int>(ty.high) * width;
      const int xl = static_cast<int>(tx.low), xh = static_cast<int>(tx.high);
      if (ty.w_low != acc_t(0) && tx.w_low != acc_t(0)) visit(yl + xl, ty.w_low * tx.w_low);
      if (ty.w_low != acc_t(0) && tx.w_high != acc_t(0)) visit(yl + xh, ty.w_low * tx.w_high);
      if (ty.w_high != acc_t(0) && tx.w_low != acc_t(0)) visit(yh + xl, ty.w_high * tx.w_low);
      if (ty.w_high != acc_t(0) && tx.w_high != acc_t(0)) visit(yh + xh, ty.w_high * tx.w_high);
    }
  }
}

// ---- forward ----

// Grid (RoIs, channel ranges of channels_per_block), kPoolThreads threads.
template <typename scalar_t>
__global__ void __launch_bounds__(kPoolThreads) roi_align_forward_kernel(
    Levels<const scalar_t, at::opmath_type<scalar_t>> maps, const at::opmath_type<scalar_t>* __restrict__ rois,
    const int64_t* __restrict__ levels, int64_t batch_size, int64_t channels, int64_t channels_per_block,
    int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ AxisTable<acc_t> rows, cols;
  const int64_t k = blockIdx.x, bins = pooled_h * pooled_w;
  const int64_t c0 = blockIdx.y * channels_per_block;
  const int64_t outputs = (min(channels, c0 + channels_per_block) - c0) * bins;
  scalar_t* o = out + (k * channels + c0) * bins;
  const acc_t* roi = rois + 5 * k;
  const int64_t n = batch_index(roi, batch_size);
  const int64_t level = roi_level(levels, k, maps.count);
  if (n < 0 || level < 0) {  // the same for the whole block: no barrier is skipped by some threads only
    for (int64_t i = threadIdx.x; i < outputs; i += blockDim.x) o[i] = static_cast<scalar_t>(n < 0 ? NAN : 0);
    return;
  }
  const RoiPlan<acc_t> plan = plan_roi(roi, maps.scale[level], maps.height[level], maps.width[level], pooled_h,
                                       pooled_w, sampling_ratio, aligned);
  if (plan.tabled) build_tables(plan, pooled_h, pooled_w, rows, cols);
  const int64_t plane_size = plan.height * plan.width;
  const scalar_t* image = maps.data[level] + (n * channels + c0) * plane_size;
  // One loop per path (rather than a branch inside one loop) keeps each loop's registers to its own.
  auto pool = [&](auto&& taps) {
    for (int64_t i = threadIdx.x; i < outputs; i += blockDim.x) {
      const int bin = static_cast<int>(i % bins);
      const scalar_t* plane = image + (i / bins) * plane_size;
      acc_t sum = 0;
      taps(bin / static_cast<int>(pooled_w), bin % static_cast<int>(pooled_w),
           [&](int offset, acc_t w) { sum += w * static_cast<acc_t>(plane[offset]); });
      o[i] = static_cast<scalar_t>(sum / plan.grid.count);
    }
  };
  if (plan.tabled) {
    pool([&](int ph, int pw, auto&& visit) { for_table_taps(rows, cols, plan, ph, pw, visit); });
  } else {
    pool([&](int ph, int pw, auto&& visit) { for_sample_taps(plan, ph, pw, visit); });
  }
}

// ---- backward with atomics ----

// Same grid and tables as the forward: one atomic add per merged tap (coinciding taps of a bin's samples
// are summed in the table first), accumulating in acc_t.
template <typename scalar_t>
__global__ void __launch_bounds__(kPoolThreads) roi_align_backward_atomic_kernel(
    Levels<at::opmath_type<scalar_t>, at::opmath_type<scalar_t>> grads, const scalar_t* __restrict__ grad,
    const at::opmath_type<scalar_t>* __restrict__ rois, const int64_t* __restrict__ levels, int64_t batch_size,
    int64_t channels, int64_t channels_per_block, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
    bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ AxisTable<acc_t> rows, cols;
  const int64_t k = blockIdx.x, bins = pooled_h * pooled_w;
  const int64_t c0 = blockIdx.y * channels_per_block;
  const int64_t outputs = (min(channels, c0 + channels_per_block) - c0) * bins;
  const acc_t* roi = rois + 5 * k;
  const int64_t n = batch_index(roi, batch_size);
  const int64_t level = roi_level(levels, k, grads.count);
  if (n < 0 || level < 0) return;  // uniform per block
  const RoiPlan<acc_t> plan = plan_roi(roi, grads.scale[level], grads.height[level], grads.width[level], pooled_h,
                                       pooled_w, sampling_ratio, aligned);
  if (plan.tabled) build_tables(plan, pooled_h, pooled_w, rows, cols);
  const int64_t plane_size = plan.height * plan.width;
  acc_t* image = grads.data[level] + (n * channels + c0) * plane_size;
  const scalar_t* g = grad + (k * channels + c0) * bins;
  auto scatter = [&](auto&& taps) {
    for (int64_t i = threadIdx.x; i < outputs; i += blockDim.x) {
      const acc_t gv = static_cast<acc_t>(g[i]) / plan.grid.count;
      if (gv == acc_t(0)) continue;  // adds nothing (zero-weight taps are skipped too: a NaN gradient stays put)
      const int bin = static_cast<int>(i % bins);
      acc_t* plane = image + (i / bins) * plane_size;
      taps(bin / static_cast<int>(pooled_w), bin % static_cast<int>(pooled_w),
           [&](int offset, acc_t w) { atomicAdd(plane + offset, w * gv); });
    }
  };
  if (plan.tabled) {
    scatter([&](int ph, int pw, auto&& visit) { for_table_taps(rows, cols, plan, ph, pw, visit); });
  } else {
    scatter([&](int ph, int pw, auto&& visit) { for_sample_taps(plan, ph, pw, visit); });
  }
}

// Channels per block of the forward and atomic backward: all of them when there are enough RoIs to fill
// the GPU, else split so that about kTargetBlocks blocks run (each at least 32 channels).
int64_t channels_per_block(int64_t num_rois, int64_t channels) {
  constexpr int64_t kTargetBlocks = 2048;
  const int64_t splits = std::min(cuda::ceil_div(channels, 32), std::max<int64_t>(1, kTargetBlocks / num_rois));
  return cuda::ceil_div(channels, std::max<int64_t>(splits, 1));
}

// ---- deterministic backward (gather) ----

template <typename acc_t>
__global__ void roi_footprint_kernel(Levels<const void, acc_t> maps, const acc_t* __restrict__ rois,
                                     const int64_t* __restrict__ levels, int64_t num_rois, int64_t batch_size,
                                     int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                     RoiFootprint* __restrict__ out) {
  PYDET_CUDA_1D_LOOP(k, num_rois) {
    const acc_t* roi = rois + 5 * k;
    RoiFootprint f{-1, 0, 1, 0, 1, 0};
    const int64_t n = batch_index(roi, batch_size);
    const int64_t level = roi_level(levels, k, maps.count);
    if (level >= 0 && n >= 0) {
      const RoiGrid<acc_t> g =
          roi_align::make_roi_grid<acc_t>(roi + 1, maps.scale[level], pooled_h, pooled_w, sampling_ratio, aligned);
      roi_align::axis_footprint(g.start_y, g.bin_h, pooled_h, g.samples_y, maps.height[level], f.y0, f.y1);
      roi_align::axis_footprint(g.start_x, g.bin_w, pooled_w, g.samples_x, maps.width[level], f.x0, f.x1);
      if (f.y0 <= f.y1 && f.x0 <= f.x1) {
        f.image = static_cast<int32_t>(n);
        f.level = static_cast<int32_t>(level);
      }
    }
    out[k] = f;
  }
}

constexpr int kTileW = 32, kTileH = 8, kGatherThreads = kTileW * kTileH, kGatherChannels = 8;
constexpr int kPixelBins = 4;  // bins per axis a pixel's weights are held for at a time

// Up to kPixelBins of the bins of one axis that weigh on pixel `pos` (after the first `skip` of them),
// with their weights; `more` when further ones follow (a RoI whose bins are smaller than a pixel).
template <typename acc_t>
struct PixelBins {
  int bin[kPixelBins];
  acc_t weight[kPixelBins];
  int count;
  bool more;
};

template <typename acc_t>
__device__ __forceinline__ PixelBins<acc_t> pixel_bins(acc_t start, acc_t bin, int64_t pooled, int64_t samples,
                                                       int64_t size, int64_t pos, int skip) {
  PixelBins<acc_t> b;
  b.count = 0;
  b.more = false;
  int seen = 0;
  roi_align::for_pixel_bins(start, bin, pooled, samples, size, pos, [&](int64_t p, acc_t w) {
    if (seen++ < skip) return;
    if (b.count == kPixelBins) {
      b.more = true;
      return;
    }
#pragma unroll
    for (int i = 0; i < kPixelBins; ++i) {  // constant indices keep the arrays in registers
      if (i == b.count) {
        b.bin[i] = static_cast<int>(p);
        b.weight[i] = w;
      }
    }
    ++b.count;
  });
  return b;
}

// One thread per input pixel (a 32x8 tile per block, one image per grid row); the block culls the RoIs
// against its tile in RoI order. For each RoI that reaches the pixel, its geometry (the bins weighing on
// the pixel, per axis) is computed once and then serves every channel: the block runs through all the
// channel groups itself, adding the RoI's contribution to the pixel's running sums, which live in the
// acc_t gradient buffer (each element is owned by one thread, so the order is fixed: RoI order, as the
// atomic-free result must be reproducible). Pixels no RoI reaches are written zero.
// The pixel's bin lists, held across the channel loop, take ~160 registers: with no explicit minimum of
// blocks per SM, ptxas caps the kernel at 128 registers and spills.
template <typename scalar_t>
__global__ void __launch_bounds__(kGatherThreads, 1)
    roi_align_backward_gather_kernel(Levels<at::opmath_type<scalar_t>, at::opmath_type<scalar_t>> sums,
                                     const scalar_t* __restrict__ grad,
                                     const at::opmath_type<scalar_t>* __restrict__ rois,
                                     const RoiFootprint* __restrict__ footprints, int64_t num_rois,
                                     int64_t channels, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                     bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ int32_t listed[kGatherThreads];
  __shared__ int warp_counts[kGatherThreads / 32];
  int level = 0;
  while (level + 1 < sums.count && blockIdx.x >= sums.tile_begin[level + 1]) ++level;
  const int64_t height = sums.height[level], width = sums.width[level];
  const int64_t tiles_x = (width + kTileW - 1) / kTileW;
  const int64_t tile = blockIdx.x - sums.tile_begin[level];
  const int64_t tile_y0 = (tile / tiles_x) * kTileH, tile_x0 = (tile % tiles_x) * kTileW;
  const int64_t y = tile_y0 + threadIdx.x / kTileW, x = tile_x0 + threadIdx.x % kTileW;
  const int64_t n = blockIdx.y, bins = pooled_h * pooled_w, plane = height * width;
  const bool inside = y < height && x < width;
  acc_t* out = sums.data[level] + n * channels * plane + (inside ? y * width + x : 0);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  bool touched = false;  // whether `out` holds this pixel's running sums yet

  for (int64_t chunk = 0; chunk < num_rois; chunk += kGatherThreads) {
    // Keep, in RoI order, the RoIs of this image and level whose footprint meets the tile.
    const int64_t k = chunk + threadIdx.x;
    bool keep = false;
    if (k < num_rois) {
      const RoiFootprint f = footprints[k];
      keep = f.image == n && f.level == level && f.y0 < tile_y0 + kTileH && f.y1 >= tile_y0 &&
             f.x0 < tile_x0 + kTileW && f.x1 >= tile_x0;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int offset = 0, total = 0;
    for (int w = 0; w < kGatherThreads / 32; ++w) {
      offset += w < warp ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    if (keep) listed[offset + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(k);
    __syncthreads();

    for (int i = 0; i < total; ++i) {
      const int64_t r = listed[i];
      const RoiFootprint f = footprints[r];
      if (!inside || y < f.y0 || y > f.y1 || x < f.x0 || x > f.x1) continue;
      const RoiGrid<acc_t> g = roi_align::make_roi_grid<acc_t>(rois + 5 * r + 1, sums.scale[level], pooled_h,
                                                               pooled_w, sampling_ratio, aligned);
      const scalar_t* gr = grad + r * channels * bins;
      // Usually one (y, x) pair of bin lists; RoIs with bins below a pixel take several.
      for (int sy = 0;; sy += kPixelBins) {
        const PixelBins<acc_t> by = pixel_bins(g.start_y, g.bin_h, pooled_h, g.samples_y, height, y, sy);
        for (int sx = 0; by.count > 0; sx += kPixelBins) {
          const PixelBins<acc_t> bx = pixel_bins(g.start_x, g.bin_w, pooled_w, g.samples_x, width, x, sx);
          if (bx.count == 0) break;
          for (int64_t c0 = 0; c0 < channels; c0 += kGatherChannels) {
            acc_t acc[kGatherChannels];
#pragma unroll
            for (int cc = 0; cc < kGatherChannels; ++cc) {
              acc[cc] = touched && c0 + cc < channels ? out[(c0 + cc) * plane] : acc_t(0);
            }
            for (int iy = 0; iy < by.count; ++iy) {
              for (int ix = 0; ix < bx.count; ++ix) {
                const acc_t w = by.weight[iy] * bx.weight[ix] / g.count;
                const scalar_t* src = gr + c0 * bins + by.bin[iy] * pooled_w + bx.bin[ix];
#pragma unroll
                for (int cc = 0; cc < kGatherChannels; ++cc) {
                  if (c0 + cc < channels) acc[cc] += w * static_cast<acc_t>(src[cc * bins]);
                }
              }
            }
#pragma unroll
            for (int cc = 0; cc < kGatherChannels; ++cc) {
              if (c0 + cc < channels) out[(c0 + cc) * plane] = acc[cc];
            }
          }
          touched = true;
          if (!bx.more) break;
        }
        if (!by.more) break;
      }
    }
    __syncthreads();  // `listed` and `warp_counts` are rewritten by the next chunk
  }
  if (inside && !touched) {
    for (int64_t c = 0; c < channels; ++c) out[c * plane] = acc_t(0);
  }
}

// ---- host side ----

at::Tensor forward_cuda(at::TensorList features_in, const at::Tensor& rois_in, const at::Tensor* levels,
                        c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                        bool aligned) {
  const c10::cuda::CUDAGuard guard(features_in[0].device());
  const auto& first = features_in[0];
  const int64_t batch_size = first.size(0), channels = first.size(1), num_rois = rois_in.size(0);
  auto output = at::empty({num_rois, channels, pooled_h, pooled_w}, first.options());
  if (output.numel() == 0) return output;
  std::vector<at::Tensor> features;
  std::vector<int64_t> heights, widths;
  for (const auto& f : features_in) {
    features.push_back(f.contiguous());
    heights.push_back(f.size(2));
    widths.push_back(f.size(3));
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto rois = rois_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    std::vector<const scalar_t*> data;
    for (const auto& f : features) data.push_back(f.const_data_ptr<scalar_t>());
    const auto maps = make_levels<const scalar_t, acc_t>(data, heights, widths, scales);
    const int64_t per_block = channels_per_block(num_rois, channels);
    const dim3 blocks(static_cast<unsigned>(num_rois), static_cast<unsigned>(cuda::ceil_div(channels, per_block)));
    roi_align_forward_kernel<scalar_t><<<blocks, kPoolThreads, 0, stream>>>(
        maps, rois.const_data_ptr<acc_t>(), levels ? levels->const_data_ptr<int64_t>() : nullptr, batch_size,
        channels, per_block, pooled_h, pooled_w, sampling_ratio, aligned, output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> backward_cuda(const at::Tensor& grad_in, const at::Tensor& rois_in, const at::Tensor* levels_in,
                                      c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                      int64_t batch_size, int64_t channels, c10::ArrayRef<int64_t> heights,
                                      c10::ArrayRef<int64_t> widths, int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const int64_t num_rois = rois_in.size(0), num_levels = static_cast<int64_t>(heights.size());
  const int64_t* levels = levels_in ? levels_in->const_data_ptr<int64_t>() : nullptr;
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const auto rois = rois_in.to(acc_dtype).contiguous();
    // Both paths accumulate in acc_t: in place for float and double, in a float32 buffer for half types.
    std::vector<at::Tensor> sums;
    std::vector<acc_t*> data;
    for (int64_t l = 0; l < num_levels; ++l) {
      // The gather kernel writes every element itself; the atomics add into zeros.
      const auto shape = std::vector<int64_t>{batch_size, channels, heights[l], widths[l]};
      sums.push_back(deterministic ? at::empty(shape, grad.options().dtype(acc_dtype))
                                   : at::zeros(shape, grad.options().dtype(acc_dtype)));
      data.push_back(sums.back().mutable_data_ptr<acc_t>());
    }
    auto maps = make_levels<acc_t, acc_t>(data, heights, widths, scales);
    if (deterministic) {
      maps.tile_begin[0] = 0;
      for (int64_t l = 0; l < num_levels; ++l) {
        maps.tile_begin[l + 1] =
            maps.tile_begin[l] + cuda::ceil_div(heights[l], kTileH) * cuda::ceil_div(widths[l], kTileW);
      }
      const int64_t tiles = maps.tile_begin[num_levels];
      if (tiles > 0 && channels > 0 && batch_size > 0) {
        TORCH_CHECK_VALUE(batch_size <= 65535, "deterministic roi_align backward supports at most 65535 images");
        auto footprints = at::empty({num_rois, static_cast<int64_t>(sizeof(RoiFootprint))},
                                    grad.options().dtype(at::kByte));
        if (num_rois > 0) {
          Levels<const void, acc_t> shapes{};
          shapes.count = maps.count;
          for (int64_t l = 0; l < num_levels; ++l) {
            shapes.height[l] = heights[l];
            shapes.width[l] = widths[l];
            shapes.scale[l] = maps.scale[l];
          }
          roi_footprint_kernel<acc_t><<<cuda::blocks_for(num_rois), cuda::kThreadsPerBlock, 0, stream>>>(
              shapes, rois.const_data_ptr<acc_t>(), levels, num_rois, batch_size, pooled_h, pooled_w, sampling_ratio,
              aligned, reinterpret_cast<RoiFootprint*>(footprints.mutable_data_ptr()));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        const dim3 blocks(static_cast<unsigned>(tiles), static_cast<unsigned>(batch_size));
        roi_align_backward_gather_kernel<scalar_t><<<blocks, kGatherThreads, 0, stream>>>(
            maps, grad.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(),
            reinterpret_cast<const RoiFootprint*>(footprints.const_data_ptr()), num_rois, channels, pooled_h,
            pooled_w, sampling_ratio, aligned);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    } else if (grad.numel() > 0) {
      const int64_t per_block = channels_per_block(num_rois, channels);
      const dim3 blocks(static_cast<unsigned>(num_rois), static_cast<unsigned>(cuda::ceil_div(channels, per_block)));
      roi_align_backward_atomic_kernel<scalar_t><<<blocks, kPoolThreads, 0, stream>>>(
          maps, grad.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(), levels, batch_size, channels,
          per_block, pooled_h, pooled_w, sampling_ratio, aligned);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // float and double: the sums are the gradient (to() returns them as they are); half types: one rounding.
    for (auto& s : sums) grads.push_back(s.to(grad.scalar_type()));
  });
  return grads;
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                          int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  roi_align::check_forward_args({input}, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, sampling_ratio);
  return forward_cuda({input}, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  roi_align::check_backward_args(grad, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, batch_size, channels,
                                 {height}, {width});
  return backward_cuda(grad, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, batch_size, channels, {height},
                       {width}, sampling_ratio, aligned)[0];
}

at::Tensor multi_scale_roi_align_cuda(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels_in,
                                      c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                      int64_t sampling_ratio, bool aligned) {
  roi_align::check_forward_args(features, rois, &levels_in, scales, pooled_h, pooled_w, sampling_ratio);
  const auto levels = levels_in.contiguous();
  return forward_cuda(features, rois, &levels, scales, pooled_h, pooled_w, sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_scale_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                                            const at::Tensor& levels_in,
                                                            c10::ArrayRef<double> scales, int64_t pooled_h,
                                                            int64_t pooled_w, int64_t batch_size, int64_t channels,
                                                            c10::ArrayRef<int64_t> heights,
                                                            c10::ArrayRef<int64_t> widths, int64_t sampling_ratio,
                                                            bool aligned) {
  roi_align::check_backward_args(grad, rois, &levels_in, scales, pooled_h, pooled_w, batch_size, channels, heights,
                                 widths);
  const auto levels = levels_in.contiguous();
  return backward_cuda(grad, rois, &levels, scales, pooled_h, pooled_w, batch_size, channels, heights, widths,
                       sampling_ratio, aligned);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_cuda);
  m.impl("multi_scale_roi_align_backward", &multi_scale_roi_align_backward_cuda);
}

}  // namespace pydet
