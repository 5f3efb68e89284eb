// CUDA RoIAlign (torchvision semantics), single- and multi-level.
//
// Forward: one thread per output element. Backward: by default one thread per output-gradient element,
// scattering into the input gradient with atomicAdd (float32 accumulation for half/bfloat16). With
// torch.use_deterministic_algorithms(True) it gathers instead: one thread per input element (for a
// block of channels) sums the contributions of the RoIs whose samples touch it, in RoI order, so the
// result is bit-for-bit reproducible. A thread block culls the RoIs against its tile first.
//
// Batch indices are checked in the kernels (device-side assert), so no host sync is needed.
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
    levels.height[l] = heights[l];
    levels.width[l] = widths[l];
    levels.scale[l] = static_cast<acc_t>(scales[l]);
  }
  return levels;
}

// The RoI's batch index, asserting (like PyTorch's indexing kernels) that it is an integer in range.
template <typename acc_t>
__device__ __forceinline__ int64_t batch_index(const acc_t* roi, int64_t batch_size) {
  const acc_t b = roi[0];
  CUDA_KERNEL_ASSERT_MSG(b >= acc_t(0) && b < static_cast<acc_t>(batch_size) && b == floor(b),
                         "roi_align: rois[:, 0] must hold integer batch indices in [0, N)");
  return static_cast<int64_t>(b);
}

__device__ __forceinline__ int64_t roi_level(const int64_t* levels, int64_t k, int count) {
  const int64_t level = levels == nullptr ? 0 : levels[k];
  return level >= 0 && level < count ? level : -1;
}

// ---- forward ----

template <typename scalar_t>
__global__ void roi_align_forward_kernel(Levels<const scalar_t, at::opmath_type<scalar_t>> maps,
                                         const at::opmath_type<scalar_t>* __restrict__ rois,
                                         const int64_t* __restrict__ levels, int64_t num_rois, int64_t batch_size,
                                         int64_t channels, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                         bool aligned, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bins = pooled_h * pooled_w;
  PYDET_CUDA_1D_LOOP(idx, num_rois * channels * bins) {
    const int64_t pw = idx % pooled_w, ph = (idx / pooled_w) % pooled_h;
    const int64_t c = (idx / bins) % channels, k = idx / (bins * channels);
    const acc_t* roi = rois + 5 * k;
    const int64_t n = batch_index(roi, batch_size);
    const int64_t level = roi_level(levels, k, maps.count);
    acc_t result = 0;
    if (level >= 0) {
      const int64_t height = maps.height[level], width = maps.width[level];
      const RoiGrid<acc_t> g =
          roi_align::make_roi_grid<acc_t>(roi + 1, maps.scale[level], pooled_h, pooled_w, sampling_ratio, aligned);
      const scalar_t* plane = maps.data[level] + (n * channels + c) * height * width;
      acc_t sum = 0;
      for (int64_t iy = 0; iy < g.samples_y; ++iy) {
        AxisTaps<acc_t> ty;
        if (!roi_align::axis_taps(roi_align::sample_coord(g.start_y, g.bin_h, ph, iy, g.samples_y), height, ty)) {
          continue;
        }
        const scalar_t* row_low = plane + ty.low * width;
        const scalar_t* row_high = plane + ty.high * width;
        for (int64_t ix = 0; ix < g.samples_x; ++ix) {
          AxisTaps<acc_t> tx;
          if (!roi_align::axis_taps(roi_align::sample_coord(g.start_x, g.bin_w, pw, ix, g.samples_x), width, tx)) {
            continue;
          }
          // Zero-weight taps are skipped, as on the CPU: 0 * inf must not turn a finite sum into NaN.
          const bool yl = ty.w_low != acc_t(0), yh = ty.w_high != acc_t(0);
          const bool xl = tx.w_low != acc_t(0), xh = tx.w_high != acc_t(0);
          if (yl && xl) sum += ty.w_low * tx.w_low * static_cast<acc_t>(row_low[tx.low]);
          if (yl && xh) sum += ty.w_low * tx.w_high * static_cast<acc_t>(row_low[tx.high]);
          if (yh && xl) sum += ty.w_high * tx.w_low * static_cast<acc_t>(row_high[tx.low]);
          if (yh && xh) sum += ty.w_high * tx.w_high * static_cast<acc_t>(row_high[tx.high]);
        }
      }
      result = sum / g.count;
    }
    out[idx] = static_cast<scalar_t>(result);
  }
}

// ---- backward with atomics ----

template <typename scalar_t>
__global__ void roi_align_backward_atomic_kernel(Levels<at::opmath_type<scalar_t>, at::opmath_type<scalar_t>> grads,
                                                 const scalar_t* __restrict__ grad,
                                                 const at::opmath_type<scalar_t>* __restrict__ rois,
                                                 const int64_t* __restrict__ levels, int64_t num_rois,
                                                 int64_t batch_size, int64_t channels, int64_t pooled_h,
                                                 int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bins = pooled_h * pooled_w;
  PYDET_CUDA_1D_LOOP(idx, num_rois * channels * bins) {
    const int64_t pw = idx % pooled_w, ph = (idx / pooled_w) % pooled_h;
    const int64_t c = (idx / bins) % channels, k = idx / (bins * channels);
    const acc_t* roi = rois + 5 * k;
    const int64_t n = batch_index(roi, batch_size);
    const int64_t level = roi_level(levels, k, grads.count);
    if (level < 0) continue;
    const int64_t height = grads.height[level], width = grads.width[level];
    const RoiGrid<acc_t> g =
        roi_align::make_roi_grid<acc_t>(roi + 1, grads.scale[level], pooled_h, pooled_w, sampling_ratio, aligned);
    const acc_t gv = static_cast<acc_t>(grad[idx]) / g.count;
    if (gv == acc_t(0)) continue;
    acc_t* plane = grads.data[level] + (n * channels + c) * height * width;
    for (int64_t iy = 0; iy < g.samples_y; ++iy) {
      AxisTaps<acc_t> ty;
      if (!roi_align::axis_taps(roi_align::sample_coord(g.start_y, g.bin_h, ph, iy, g.samples_y), height, ty)) {
        continue;
      }
      for (int64_t ix = 0; ix < g.samples_x; ++ix) {
        AxisTaps<acc_t> tx;
        if (!roi_align::axis_taps(roi_align::sample_coord(g.start_x, g.bin_w, pw, ix, g.samples_x), width, tx)) {
          continue;
        }
        // Zero-weight taps get nothing (as on the CPU and in the gather path): a NaN gradient stays put.
        const bool yl = ty.w_low != acc_t(0), yh = ty.w_high != acc_t(0);
        const bool xl = tx.w_low != acc_t(0), xh = tx.w_high != acc_t(0);
        if (yl && xl) atomicAdd(plane + ty.low * width + tx.low, gv * ty.w_low * tx.w_low);
        if (yl && xh) atomicAdd(plane + ty.low * width + tx.high, gv * ty.w_low * tx.w_high);
        if (yh && xl) atomicAdd(plane + ty.high * width + tx.low, gv * ty.w_high * tx.w_low);
        if (yh && xh) atomicAdd(plane + ty.high * width + tx.high, gv * ty.w_high * tx.w_high);
      }
    }
  }
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
    if (level >= 0) {
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

constexpr int kTileW = 32, kTileH = 8, kGatherThreads = kTileW * kTileH, kGatherChannels = 16;

template <typename scalar_t>
__global__ void __launch_bounds__(kGatherThreads)
    roi_align_backward_gather_kernel(Levels<scalar_t, at::opmath_type<scalar_t>> grads,
                                     const scalar_t* __restrict__ grad,
                                     const at::opmath_type<scalar_t>* __restrict__ rois,
                                     const RoiFootprint* __restrict__ footprints, int64_t num_rois,
                                     int64_t channels, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                     bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ int32_t listed[kGatherThreads];
  __shared__ int warp_counts[kGatherThreads / 32];
  int level = 0;
  while (level + 1 < grads.count && blockIdx.x >= grads.tile_begin[level + 1]) ++level;
  const int64_t height = grads.height[level], width = grads.width[level];
  const int64_t tiles_x = (width + kTileW - 1) / kTileW;
  const int64_t tile = blockIdx.x - grads.tile_begin[level];
  const int64_t tile_y0 = (tile / tiles_x) * kTileH, tile_x0 = (tile % tiles_x) * kTileW;
  const int64_t y = tile_y0 + threadIdx.x / kTileW, x = tile_x0 + threadIdx.x % kTileW;
  const int64_t n = blockIdx.z, c0 = static_cast<int64_t>(blockIdx.y) * kGatherChannels;
  const int64_t bins = pooled_h * pooled_w;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  acc_t acc[kGatherChannels];
#pragma unroll
  for (int i = 0; i < kGatherChannels; ++i) acc[i] = acc_t(0);

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
      if (y < f.y0 || y > f.y1 || x < f.x0 || x > f.x1) continue;
      const RoiGrid<acc_t> g = roi_align::make_roi_grid<acc_t>(rois + 5 * r + 1, grads.scale[level], pooled_h,
                                                               pooled_w, sampling_ratio, aligned);
      int64_t jy0, jy1, jx0, jx1;
      roi_align::candidate_samples(g.start_y, g.bin_h, pooled_h, g.samples_y, height, y, jy0, jy1);
      roi_align::candidate_samples(g.start_x, g.bin_w, pooled_w, g.samples_x, width, x, jx0, jx1);
      const scalar_t* gr = grad + (r * channels + c0) * bins;
      // Samples come bin by bin, so the weight of each bin is summed over a run of consecutive j.
      for (int64_t jy = jy0; jy <= jy1;) {
        const int64_t ph = jy / g.samples_y;
        acc_t wy = 0;
        for (; jy <= jy1 && jy / g.samples_y == ph; ++jy) {
          wy += roi_align::sample_weight_on(g.start_y, g.bin_h, g.samples_y, height, jy, y);
        }
        if (wy == acc_t(0)) continue;
        for (int64_t jx = jx0; jx <= jx1;) {
          const int64_t pw = jx / g.samples_x;
          acc_t wx = 0;
          for (; jx <= jx1 && jx / g.samples_x == pw; ++jx) {
            wx += roi_align::sample_weight_on(g.start_x, g.bin_w, g.samples_x, width, jx, x);
          }
          if (wx == acc_t(0)) continue;
          const acc_t w = wy * wx / g.count;
#pragma unroll
          for (int cc = 0; cc < kGatherChannels; ++cc) {
            if (c0 + cc < channels) acc[cc] += w * static_cast<acc_t>(gr[cc * bins + ph * pooled_w + pw]);
          }
        }
      }
    }
    __syncthreads();  // `listed` and `warp_counts` are rewritten by the next chunk
  }
  if (y < height && x < width) {
    scalar_t* out = grads.data[level] + ((n * channels + c0) * height + y) * width + x;
#pragma unroll
    for (int cc = 0; cc < kGatherChannels; ++cc) {
      if (c0 + cc < channels) out[cc * height * width] = static_cast<scalar_t>(acc[cc]);
    }
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
    roi_align_forward_kernel<scalar_t><<<cuda::blocks_for(output.numel()), cuda::kThreadsPerBlock, 0, stream>>>(
        maps, rois.const_data_ptr<acc_t>(), levels ? levels->const_data_ptr<int64_t>() : nullptr, num_rois,
        batch_size, channels, pooled_h, pooled_w, sampling_ratio, aligned, output.mutable_data_ptr<scalar_t>());
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
    if (deterministic) {
      // Every element of the gradient is written by the gather kernel: no zero-fill needed.
      std::vector<scalar_t*> data;
      for (int64_t l = 0; l < num_levels; ++l) {
        grads.push_back(at::empty({batch_size, channels, heights[l], widths[l]}, grad.options()));
        data.push_back(grads.back().mutable_data_ptr<scalar_t>());
      }
      auto maps = make_levels<scalar_t, acc_t>(data, heights, widths, scales);
      maps.tile_begin[0] = 0;
      for (int64_t l = 0; l < num_levels; ++l) {
        maps.tile_begin[l + 1] =
            maps.tile_begin[l] + cuda::ceil_div(heights[l], kTileH) * cuda::ceil_div(widths[l], kTileW);
      }
      const int64_t tiles = maps.tile_begin[num_levels], channel_blocks = cuda::ceil_div(channels, kGatherChannels);
      if (tiles == 0 || channel_blocks == 0 || batch_size == 0) return;
      TORCH_CHECK_VALUE(batch_size <= 65535 && channel_blocks <= 65535,
                        "deterministic roi_align backward supports at most 65535 images and ",
                        65535 * kGatherChannels, " channels");
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
      const dim3 blocks(static_cast<unsigned>(tiles), static_cast<unsigned>(channel_blocks),
                        static_cast<unsigned>(batch_size));
      roi_align_backward_gather_kernel<scalar_t><<<blocks, kGatherThreads, 0, stream>>>(
          maps, grad.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(),
          reinterpret_cast<const RoiFootprint*>(footprints.const_data_ptr()), num_rois, channels, pooled_h, pooled_w,
          sampling_ratio, aligned);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // Atomics accumulate in acc_t: in place for float and double, in a float32 buffer for half types.
    std::vector<at::Tensor> sums;
    std::vector<acc_t*> data;
    for (int64_t l = 0; l < num_levels; ++l) {
      sums.push_back(at::zeros({batch_size, channels, heights[l], widths[l]}, grad.options().dtype(acc_dtype)));
      data.push_back(sums.back().mutable_data_ptr<acc_t>());
    }
    if (grad.numel() > 0) {
      const auto maps = make_levels<acc_t, acc_t>(data, heights, widths, scales);
      roi_align_backward_atomic_kernel<scalar_t><<<cuda::blocks_for(grad.numel()), cuda::kThreadsPerBlock, 0,
                                                   stream>>>(maps, grad.const_data_ptr<scalar_t>(),
                                                             rois.const_data_ptr<acc_t>(), levels, num_rois,
                                                             batch_size, channels, pooled_h, pooled_w,
                                                             sampling_ratio, aligned);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (auto& s : sums) grads.push_back(s.to(grad.scalar_type()));
  });
  return grads;
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                          int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  roi_align::check_features({input}, rois, {spatial_scale});
  roi_align::check_pooling(pooled_h, pooled_w);
  return forward_cuda({input}, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  roi_align::check_rois(rois);
  roi_align::check_pooling(pooled_h, pooled_w);
  roi_align::check_grad(grad, rois, channels, pooled_h, pooled_w);
  roi_align::check_feature_shapes(batch_size, channels, {height}, {width}, {spatial_scale});
  return backward_cuda(grad, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, batch_size, channels, {height},
                       {width}, sampling_ratio, aligned)[0];
}

at::Tensor multi_scale_roi_align_cuda(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels_in,
                                      c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                      int64_t sampling_ratio, bool aligned) {
  roi_align::check_features(features, rois, scales);
  roi_align::check_levels(levels_in, rois);
  roi_align::check_pooling(pooled_h, pooled_w);
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
  roi_align::check_rois(rois);
  roi_align::check_levels(levels_in, rois);
  roi_align::check_pooling(pooled_h, pooled_w);
  roi_align::check_grad(grad, rois, channels, pooled_h, pooled_w);
  roi_align::check_feature_shapes(batch_size, channels, heights, widths, scales);
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
