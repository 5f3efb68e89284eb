// CUDA kernels for greedy non-maximum suppression (same semantics as csrc/cpu/nms_kernel.cpp, bit for
// bit: the IoU test is csrc/nms.h's, compiled without FMA contraction as on the CPU).
//
// nms / batched_nms: boxes are sorted by (class, score desc, index) with cub's stable radix sorts. Each
// class is a segment with a bitmask of its own (csrc/nms.h, segmented_nms): O(sum n_c^2) bits and IoU tests,
// in 64x64 tiles. One host sync reads the mask's size (it depends on the class sizes, which only the
// device knows); then every segment runs its greedy walk in its own block, in parallel: per 64-box step,
// warp 0 resolves the step from the diagonal words and the block's warps fold the kept rows into the
// later words, one word per warp, the 64 rows across the lanes, OR-reduced with shuffles. A second host
// sync sizes the output (the API returns the kept indices).
//
// multiclass_nms: no host synchronisation. Candidates (score > threshold) are compacted with a device
// count, sorted per image (segmented radix sort, segment ends read on the device), and one block per
// image runs the greedy loop in chunks of candidates against the boxes kept so far, stopping at
// max_per_image. Buffers have fixed sizes, so nothing needs the count on the host.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../common.h"
#include "../nms.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

using segmented_nms::kTile;
using segmented_nms::SegmentTables;
constexpr int kMaxWalkWarps = 8;      // warps of a segment's walk block
constexpr int kChunk = 256;           // candidates per step of the multiclass greedy loop (= threads)
constexpr int kChunkWords = kChunk / 32;

template <typename T>
using DeviceBox = AreaBox<T>;

// Runs a cub algorithm: a size query, then the call with temporary storage from torch's allocator.
template <typename CubCall>
void cub_run(const at::Tensor& like, CubCall&& call) {
  size_t bytes = 0;
  C10_CUDA_CHECK(call(nullptr, bytes));
  // At least one byte: a null temp pointer would turn the second call into another size query.
  auto temp = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
  C10_CUDA_CHECK(call(temp.data_ptr(), bytes));
}

// ------------------------------------------------------------------------------------------------
// nms / batched_nms

template <typename scalar_t, typename key_t>
__global__ void score_keys_kernel(const scalar_t* __restrict__ scores, int64_t n, key_t* __restrict__ keys,
                                  int32_t* __restrict__ iota) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(i, n) {
    keys[i] = score_key(static_cast<acc_t>(scores[i]));
    iota[i] = static_cast<int32_t>(i);
  }
}

// Class keys in score order (signed int64 mapped to an unsigned order), to be sorted stably by class.
__global__ void class_keys_kernel(const int64_t* __restrict__ idxs, const int32_t* __restrict__ order, int64_t n,
                                  uint64_t* __restrict__ keys, int32_t* __restrict__ iota) {
  PYDET_CUDA_1D_LOOP(p, n) {
    keys[p] = static_cast<uint64_t>(idxs[order[p]]) ^ 0x8000000000000000ull;
    iota[p] = static_cast<int32_t>(p);
  }
}

// For each processing position q (class-major, score order inside a class): its box with its area, its
// segment, and what the scans need (row length, chunk start); the longest segment's chunk count.
template <typename scalar_t>
__global__ void nms_prepare_kernel(const scalar_t* __restrict__ boxes, const int32_t* __restrict__ order,
                                   const int32_t* __restrict__ rank_of, const uint64_t* __restrict__ class_keys,
                                   int64_t n, DeviceBox<at::opmath_type<scalar_t>>* __restrict__ sorted_boxes,
                                   int32_t* __restrict__ seg_begin, int32_t* __restrict__ seg_end,
                                   int64_t* __restrict__ row_words, int32_t* __restrict__ chunk_heads,
                                   int* __restrict__ max_chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(q, n) {
    const int64_t i = order[rank_of ? rank_of[q] : q];
    sorted_boxes[q] = area_box<acc_t>(boxes + 4 * i);
    int64_t begin, end;
    segmented_nms::segment_of(class_keys, n, q, begin, end);
    seg_begin[q] = static_cast<int32_t>(begin);
    seg_end[q] = static_cast<int32_t>(end);
    row_words[q] = segmented_nms::row_words(begin, end);
    chunk_heads[q] = segmented_nms::starts_chunk(q, begin);
    if (q == begin) atomicMax(max_chunks, static_cast<int>(segmented_nms::chunks_of(end - begin)));
  }
}

// The sizes the host needs to launch the rest: mask words, chunks, longest segment in chunks.
__global__ void nms_sizes_kernel(const int64_t* __restrict__ row_offset, const int32_t* __restrict__ chunk_id,
                                 const int* __restrict__ max_chunks, int64_t n, int64_t* __restrict__ sizes) {
  sizes[0] = row_offset[n];
  sizes[1] = chunk_id[n - 1] + 1;
  sizes[2] = *max_chunks;
}

// Chunk starts, and NaN scores marked removed before the walk (such boxes are never kept).
template <typename key_t>
__global__ void nms_chunks_kernel(SegmentTables t, const key_t* __restrict__ keys_by_rank,
                                  const int32_t* __restrict__ rank_of, int64_t n, int32_t* __restrict__ chunk_first,
                                  unsigned long long* __restrict__ removed) {
  PYDET_CUDA_1D_LOOP(q, n) {
    const int64_t begin = t.seg_begin[q];
    if (segmented_nms::starts_chunk(q, begin)) chunk_first[t.chunk_id[q]] = static_cast<int32_t>(q);
    if (keys_by_rank[rank_of ? rank_of[q] : q] == 0) atomicOr(removed + t.chunk_id[q], segmented_nms::chunk_bit(q, begin));
  }
}

// Grid (chunks, longest segment in chunks), kTile threads: one tile of one segment's mask per block.
template <typename T>
__global__ void __launch_bounds__(kTile) nms_mask_kernel(SegmentTables t, const DeviceBox<T>* __restrict__ boxes,
                                                         T threshold, uint64_t* __restrict__ mask) {
  segmented_nms::MaskTile tile;
  if (!segmented_nms::mask_tile(t, blockIdx.x, blockIdx.y, tile)) return;
  __shared__ DeviceBox<T> cols[kTile];
  const int i = threadIdx.x;
  if (i < tile.cols) cols[i] = boxes[tile.first_col + i];
  __syncthreads();
  if (i >= tile.rows) return;
  const int64_t q = tile.first_row + i;
  mask[t.row_offset[q] + tile.chunk] = segmented_nms::tile_row_bits(boxes[q], i, cols, tile, threshold);
}

__device__ __forceinline__ uint64_t warp_or(uint64_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One block per chunk; the block of a segment's first chunk walks that segment (segments in parallel).
// removed/kept are per global chunk; removed is read and written by this block only.
__global__ void __launch_bounds__(kMaxWalkWarps * 32) nms_walk_kernel(SegmentTables t,
                                                                      const uint64_t* __restrict__ mask,
                                                                      uint64_t* removed,
                                                                      uint64_t* __restrict__ kept_words) {
  int64_t begin, end;
  const int64_t r = blockIdx.x;
  if (!segmented_nms::segment_walk(t, r, begin, end)) return;
  __shared__ uint64_t step_kept;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int64_t steps = segmented_nms::chunks_of(end - begin);
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t first = begin + step * kTile;
    const int rows = static_cast<int>(end - first < kTile ? end - first : kTile);
    if (warp == 0) {
      const uint64_t lo = lane < rows ? mask[t.row_offset[first + lane] + step] : 0;
      const uint64_t hi = lane + 32 < rows ? mask[t.row_offset[first + lane + 32] + step] : 0;
      const uint64_t kept = segmented_nms::resolve_step(removed[r + step], rows, [&](int k) {
        return __shfl_sync(0xffffffffu, k < 32 ? lo : hi, k & 31);
      });
      if (lane == 0) {
        step_kept = kept;
        kept_words[r + step] = kept;
      }
    }
    __syncthreads();
    const uint64_t kept = step_kept;
    for (int64_t w = step + 1 + warp; kept != 0 && w < steps; w += warps) {
      const uint64_t share =
          segmented_nms::fold_share(kept, lane, [&](int k) { return mask[t.row_offset[first + k] + w]; });
      const uint64_t acc = warp_or(share);
      if (lane == 0) removed[r + w] |= acc;
    }
    __syncthreads();  // later words complete before the next step reads them; step_kept free again
  }
}

__global__ void kept_by_rank_kernel(SegmentTables t, const uint64_t* __restrict__ kept_words,
                                    const int32_t* __restrict__ rank_of, int64_t n, uint8_t* __restrict__ kept) {
  PYDET_CUDA_1D_LOOP(q, n) {
    const bool k = (kept_words[t.chunk_id[q]] & segmented_nms::chunk_bit(q, t.seg_begin[q])) != 0;
    kept[rank_of ? rank_of[q] : q] = static_cast<uint8_t>(k);
  }
}

template <typename scalar_t>
at::Tensor nms_cuda_typed(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                          double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  using key_t = score_key_t<acc_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0);
  const auto int_opts = boxes.options().dtype(at::kInt);
  const auto long_opts = boxes.options().dtype(at::kLong);
  const auto key_dtype = sizeof(key_t) == 8 ? at::kLong : at::kInt;

  // Score order (stable: ties keep index order), NaN last.
  auto keys = at::empty({n}, boxes.options().dtype(key_dtype));
  auto keys_by_rank = at::empty_like(keys);
  auto iota = at::empty({n}, int_opts);
  auto order = at::empty({n}, int_opts);
  score_keys_kernel<<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
      scores.const_data_ptr<scalar_t>(), n, reinterpret_cast<key_t*>(keys.mutable_data_ptr()),
      iota.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cub_run(boxes, [&](void* temp, size_t& bytes) {
    return cub::DeviceRadixSort::SortPairsDescending(
        temp, bytes, reinterpret_cast<const key_t*>(keys.const_data_ptr()),
        reinterpret_cast<key_t*>(keys_by_rank.mutable_data_ptr()), iota.const_data_ptr<int32_t>(),
        order.mutable_data_ptr<int32_t>(), static_cast<int>(n), 0, static_cast<int>(sizeof(key_t) * 8), stream);
  });

  // Class-major order for batched_nms (stable again: score order inside each class).
  at::Tensor class_keys, rank_of;
  if (idxs) {
    const auto idxs64 = idxs->to(at::kLong).contiguous();
    auto unsorted = at::empty({n}, long_opts);
    class_keys = at::empty({n}, long_opts);
    rank_of = at::empty({n}, int_opts);
    class_keys_kernel<<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
        idxs64.const_data_ptr<int64_t>(), order.const_data_ptr<int32_t>(), n,
        reinterpret_cast<uint64_t*>(unsorted.mutable_data_ptr()), iota.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cub_run(boxes, [&](void* temp, size_t& bytes) {
      return cub::DeviceRadixSort::SortPairs(
          temp, bytes, reinterpret_cast<const uint64_t*>(unsorted.const_data_ptr()),
          reinterpret_cast<uint64_t*>(class_keys.mutable_data_ptr()), iota.const_data_ptr<int32_t>(),
          rank_of.mutable_data_ptr<int32_t>(), static_cast<int>(n), 0, 64, stream);
    });
  }
  const auto* class_ptr = idxs ? reinterpret_cast<const uint64_t*>(class_keys.const_data_ptr()) : nullptr;
  const int32_t* rank_ptr = idxs ? rank_of.const_data_ptr<int32_t>() : nullptr;

  // Segments, row lengths and chunk starts per position; scans turn them into offsets and chunk ids.
  auto sorted_boxes = at::empty({n * static_cast<int64_t>(sizeof(DeviceBox<acc_t>))}, boxes.options().dtype(at::kByte));
  auto* box_ptr = reinterpret_cast<DeviceBox<acc_t>*>(sorted_boxes.mutable_data_ptr());
  auto seg_begin = at::empty({n}, int_opts), seg_end = at::empty({n}, int_opts);
  auto row_words = at::zeros({n + 1}, long_opts), row_offset = at::empty({n + 1}, long_opts);
  auto chunk_heads = at::empty({n}, int_opts), chunk_id = at::empty({n}, int_opts);
  auto max_chunks = at::zeros({1}, int_opts);
  nms_prepare_kernel<scalar_t><<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
      boxes.const_data_ptr<scalar_t>(), order.const_data_ptr<int32_t>(), rank_ptr, class_ptr, n, box_ptr,
      seg_begin.mutable_data_ptr<int32_t>(), seg_end.mutable_data_ptr<int32_t>(),
      row_words.mutable_data_ptr<int64_t>(), chunk_heads.mutable_data_ptr<int32_t>(),
      max_chunks.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cub_run(boxes, [&](void* temp, size_t& bytes) {
    return cub::DeviceScan::ExclusiveSum(temp, bytes, row_words.const_data_ptr<int64_t>(),
                                         row_offset.mutable_data_ptr<int64_t>(), static_cast<int>(n + 1), stream);
  });
  cub_run(boxes, [&](void* temp, size_t& bytes) {
    return cub::DeviceScan::InclusiveSum(temp, bytes, chunk_heads.const_data_ptr<int32_t>(),
                                         chunk_id.mutable_data_ptr<int32_t>(), static_cast<int>(n), stream);
  });
  // chunk_id counts from 1 after the inclusive scan; the kernels want it from 0.
  chunk_id.sub_(1);
  auto sizes = at::empty({3}, long_opts);
  nms_sizes_kernel<<<1, 1, 0, stream>>>(row_offset.const_data_ptr<int64_t>(), chunk_id.const_data_ptr<int32_t>(),
                                        max_chunks.const_data_ptr<int>(), n, sizes.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto host_sizes = sizes.cpu();  // the first host sync: the mask's size depends on the classes
  const int64_t mask_words = host_sizes.const_data_ptr<int64_t>()[0];
  const int64_t chunks = host_sizes.const_data_ptr<int64_t>()[1];
  const int64_t longest = host_sizes.const_data_ptr<int64_t>()[2];
  TORCH_CHECK_VALUE(longest <= 65535, "nms on CUDA supports up to ", 65535 * kTile, " boxes per class, got ",
                    longest * kTile - kTile + 1, " or more");

  auto chunk_first = at::empty({chunks}, int_opts);
  auto removed = at::zeros({chunks}, long_opts);
  const SegmentTables tables{seg_begin.const_data_ptr<int32_t>(), seg_end.const_data_ptr<int32_t>(),
                             row_offset.const_data_ptr<int64_t>(), chunk_id.const_data_ptr<int32_t>(),
                             chunk_first.const_data_ptr<int32_t>()};
  nms_chunks_kernel<key_t><<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
      tables, reinterpret_cast<const key_t*>(keys_by_rank.const_data_ptr()), rank_ptr, n,
      chunk_first.mutable_data_ptr<int32_t>(), reinterpret_cast<unsigned long long*>(removed.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto mask = at::empty({std::max<int64_t>(mask_words, 1)}, long_opts);
  auto* mask_ptr = reinterpret_cast<uint64_t*>(mask.mutable_data_ptr());
  nms_mask_kernel<acc_t><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(longest)), kTile, 0, stream>>>(
      tables, box_ptr, threshold_at_or_below<acc_t>(iou_threshold), mask_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Enough warps to fold the longest segment's later words, one word per warp.
  const int walk_warps = static_cast<int>(std::clamp<int64_t>(longest - 1, 1, kMaxWalkWarps));
  auto kept_words = at::empty({chunks}, long_opts);
  nms_walk_kernel<<<static_cast<unsigned>(chunks), walk_warps * 32, 0, stream>>>(
      tables, mask_ptr, reinterpret_cast<uint64_t*>(removed.mutable_data_ptr()),
      reinterpret_cast<uint64_t*>(kept_words.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Kept original indices in score order; the second host sync reads their count.
  auto kept = at::empty({n}, boxes.options().dtype(at::kByte));
  kept_by_rank_kernel<<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
      tables, reinterpret_cast<const uint64_t*>(kept_words.const_data_ptr()), rank_ptr, n,
      kept.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto selected = at::empty({n}, int_opts);
  auto num_selected = at::empty({1}, int_opts);
  cub_run(boxes, [&](void* temp, size_t& bytes) {
    return cub::DeviceSelect::Flagged(temp, bytes, order.const_data_ptr<int32_t>(), kept.const_data_ptr<uint8_t>(),
                                      selected.mutable_data_ptr<int32_t>(), num_selected.mutable_data_ptr<int32_t>(),
                                      static_cast<int>(n), stream);
  });
  const int64_t count = num_selected.item<int32_t>();
  return selected.narrow(0, 0, count).to(at::kLong);
}

at::Tensor nms_cuda_common(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor* idxs,
                           double iou_threshold) {
  check_nms_args(boxes_in, scores_in, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const int64_t n = boxes_in.size(0);
  if (n == 0) return at::empty({0}, boxes_in.options().dtype(at::kLong));
  TORCH_CHECK_VALUE(n < std::numeric_limits<int32_t>::max(), "nms on CUDA supports fewer than 2^31 boxes, got ", n);
  const auto boxes = boxes_in.contiguous();
  const auto scores = scores_in.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    out = nms_cuda_typed<scalar_t>(boxes, scores, idxs, iou_threshold);
  });
  return out;
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda_common(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return nms_cuda_common(boxes, scores, &idxs, iou_threshold);
}

// ------------------------------------------------------------------------------------------------
// multiclass_nms

template <typename scalar_t>
__global__ void candidate_flags_kernel(const scalar_t* __restrict__ scores, int64_t total,
                                       at::opmath_type<scalar_t> threshold, uint8_t* __restrict__ flags) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(i, total) { flags[i] = static_cast<acc_t>(scores[i]) > threshold; }
}

// offsets[b] = first selected candidate of image b (selected flat indices are ascending), b in [0, B].
__global__ void image_offsets_kernel(const int32_t* __restrict__ selected, const int32_t* __restrict__ num_selected,
                                     int64_t batch, int64_t per_image, int32_t* __restrict__ offsets) {
  PYDET_CUDA_1D_LOOP(b, batch + 1) {
    const int64_t target = b * per_image;
    int64_t lo = 0, hi = *num_selected;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (selected[mid] < target) lo = mid + 1; else hi = mid;
    }
    offsets[b] = static_cast<int32_t>(lo);
  }
}

template <typename scalar_t, typename key_t>
__global__ void candidate_keys_kernel(const scalar_t* __restrict__ scores, const int32_t* __restrict__ selected,
                                      const int32_t* __restrict__ num_selected, key_t* __restrict__ keys) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(i, static_cast<int64_t>(*num_selected)) {
    keys[i] = score_key(static_cast<acc_t>(scores[selected[i]]));
  }
}

struct MulticlassLayout {
  int64_t num_boxes, num_classes, max_per_image, pre_nms_topk;
  bool boxes_per_class, class_agnostic;
};

// One block per image. Candidates come best first in chunks of kChunk, one per thread: a candidate is
// dropped if a kept box of its class suppresses it; the survivors of a chunk are then resolved among
// themselves in order by thread 0 from a shared "who suppresses whom" matrix, and the kept ones are
// appended (in order) to the image's kept list and outputs until max_per_image.
template <typename scalar_t>
__global__ void __launch_bounds__(kChunk) multiclass_nms_kernel(
    const scalar_t* __restrict__ boxes, const scalar_t* __restrict__ scores, const int32_t* __restrict__ sorted_flat,
    const int32_t* __restrict__ offsets, MulticlassLayout layout, at::opmath_type<scalar_t> threshold,
    DeviceBox<at::opmath_type<scalar_t>>* kept_boxes, int32_t* kept_classes, scalar_t* __restrict__ out_boxes,
    scalar_t* __restrict__ out_scores, int64_t* __restrict__ out_labels, int64_t* __restrict__ num_detections) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ DeviceBox<acc_t> chunk_boxes[kChunk];
  __shared__ int32_t chunk_classes[kChunk];
  __shared__ bool alive[kChunk];
  __shared__ uint32_t suppressed_by[kChunk][kChunkWords];
  __shared__ uint32_t chunk_kept[kChunkWords];

  const int64_t b = blockIdx.x;
  const int t = threadIdx.x;
  const int64_t max_det = layout.max_per_image;
  const int64_t per_image = layout.num_boxes * layout.num_classes;
  const int64_t begin = offsets[b];
  int64_t count = offsets[b + 1] - begin;
  if (layout.pre_nms_topk >= 0) count = min(count, layout.pre_nms_topk);
  DeviceBox<acc_t>* kept = kept_boxes + b * max_det;
  int32_t* kept_class = kept_classes + b * max_det;
  scalar_t* image_boxes = out_boxes + b * max_det * 4;
  scalar_t* image_scores = out_scores + b * max_det;
  int64_t* image_labels = out_labels + b * max_det;

  int64_t num_kept = 0;  // the same in every thread
  for (int64_t base = 0; base < count && num_kept < max_det; base += kChunk) {
    const int64_t q = base + t;
    int32_t flat = 0, label = -1;
    const scalar_t* src = nullptr;
    DeviceBox<acc_t> box{};
    bool survives = q < count;
    if (survives) {
      flat = sorted_flat[begin + q];
      const int64_t local = flat - b * per_image;
      const int64_t n = local / layout.num_classes;
      label = static_cast<int32_t>(local % layout.num_classes);
      src = boxes + 4 * (layout.boxes_per_class ? (b * layout.num_boxes + n) * layout.num_classes + label
                                                : b * layout.num_boxes + n);
      box = area_box<acc_t>(src);
    }
    const int32_t group = layout.class_agnostic ? 0 : label;
    for (int64_t k = 0; survives && k < num_kept; ++k) {
      if (kept_class[k] == group && iou_above(kept[k], box, threshold)) survives = false;
    }
    chunk_boxes[t] = box;
    chunk_classes[t] = group;
    alive[t] = survives;
    if (t < kChunkWords) chunk_kept[t] = 0;
    __syncthreads();

    for (int w = 0; w < kChunkWords; ++w) suppressed_by[t][w] = 0;
    if (survives) {
      for (int s = 0; s < t; ++s) {
        if (alive[s] && chunk_classes[s] == group && iou_above(chunk_boxes[s], box, threshold)) {
          suppressed_by[t][s >> 5] |= 1u << (s & 31);
        }
      }
    }
    __syncthreads();

    if (t == 0) {
      int64_t total = num_kept;
      for (int c = 0; c < kChunk && total < max_det; ++c) {
        if (!alive[c]) continue;
        bool free = true;
        for (int w = 0; w <= (c >> 5); ++w) free = free && (suppressed_by[c][w] & chunk_kept[w]) == 0;
        if (free) {
          chunk_kept[c >> 5] |= 1u << (c & 31);
          ++total;
        }
      }
    }
    __syncthreads();

    int64_t before = 0, added = 0;
    for (int w = 0; w < kChunkWords; ++w) {
      const int bits = __popc(chunk_kept[w]);
      added += bits;
      if (w < (t >> 5)) before += bits;
    }
    if ((chunk_kept[t >> 5] >> (t & 31)) & 1) {
      const int64_t slot = num_kept + before + __popc(chunk_kept[t >> 5] & ((1u << (t & 31)) - 1));
      kept[slot] = box;
      kept_class[slot] = group;
      for (int k = 0; k < 4; ++k) image_boxes[4 * slot + k] = src[k];
      image_scores[slot] = scores[flat];
      image_labels[slot] = label;
    }
    num_kept += added;
    __syncthreads();  // kept list complete before the next chunk reads it; shared arrays free again
  }
  for (int64_t d = num_kept + t; d < max_det; d += kChunk) {
    for (int k = 0; k < 4; ++k) image_boxes[4 * d + k] = scalar_t(0);
    image_scores[d] = scalar_t(0);
    image_labels[d] = -1;
  }
  if (t == 0) num_detections[b] = num_kept;
}

template <typename scalar_t>
void multiclass_nms_cuda_typed(const at::Tensor& boxes, const at::Tensor& scores, const MulticlassNmsOptions& opt,
                               at::Tensor& out_boxes, at::Tensor& out_scores, at::Tensor& out_labels,
                               at::Tensor& num_detections) {
  using acc_t = at::opmath_type<scalar_t>;
  using key_t = score_key_t<acc_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = scores.size(0), per_image = scores.size(1) * scores.size(2);
  const int64_t total = batch * per_image;
  const auto int_opts = scores.options().dtype(at::kInt);

  // Candidates in flat order (stable compaction), their count and per-image offsets stay on the device.
  auto selected = at::empty({std::max<int64_t>(total, 1)}, int_opts);
  auto num_selected = at::zeros({1}, int_opts);
  if (total > 0) {
    auto flags = at::empty({total}, scores.options().dtype(at::kByte));
    candidate_flags_kernel<<<cuda::blocks_for(total), cuda::kThreadsPerBlock, 0, stream>>>(
        scores.const_data_ptr<scalar_t>(), total, threshold_at_or_below<acc_t>(opt.score_threshold),
        flags.mutable_data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cub_run(scores, [&](void* temp, size_t& bytes) {
      return cub::DeviceSelect::Flagged(temp, bytes, thrust::counting_iterator<int32_t>(0),
                                        flags.const_data_ptr<uint8_t>(), selected.mutable_data_ptr<int32_t>(),
                                        num_selected.mutable_data_ptr<int32_t>(), static_cast<int>(total), stream);
    });
  }
  auto offsets = at::empty({batch + 1}, int_opts);
  image_offsets_kernel<<<cuda::blocks_for(batch + 1), cuda::kThreadsPerBlock, 0, stream>>>(
      selected.const_data_ptr<int32_t>(), num_selected.const_data_ptr<int32_t>(), batch, per_image,
      offsets.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Best first within each image; the radix sort is stable, so ties stay in flat (box, class) order.
  auto sorted_flat = at::empty_like(selected);
  if (total > 0) {
    const auto key_dtype = sizeof(key_t) == 8 ? at::kLong : at::kInt;
    auto keys = at::empty({total}, scores.options().dtype(key_dtype));
    auto sorted_keys = at::empty_like(keys);
    // The count is on the device: a grid for up to 2^18 candidates, striding over any more.
    candidate_keys_kernel<<<cuda::blocks_for(std::min<int64_t>(total, 1 << 18)), cuda::kThreadsPerBlock, 0,
                            stream>>>(
        scores.const_data_ptr<scalar_t>(), selected.const_data_ptr<int32_t>(), num_selected.const_data_ptr<int32_t>(),
        reinterpret_cast<key_t*>(keys.mutable_data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int32_t* segment_begin = offsets.const_data_ptr<int32_t>();
    cub_run(scores, [&](void* temp, size_t& bytes) {
      return cub::DeviceSegmentedRadixSort::SortPairsDescending(
          temp, bytes, reinterpret_cast<const key_t*>(keys.const_data_ptr()),
          reinterpret_cast<key_t*>(sorted_keys.mutable_data_ptr()), selected.const_data_ptr<int32_t>(),
          sorted_flat.mutable_data_ptr<int32_t>(), static_cast<int>(total), static_cast<int>(batch), segment_begin,
          segment_begin + 1, 0, static_cast<int>(sizeof(key_t) * 8), stream);
    });
  }

  const MulticlassLayout layout{scores.size(1), scores.size(2), opt.max_per_image, opt.pre_nms_topk,
                                boxes.dim() == 4, opt.class_agnostic};
  auto kept_boxes = at::empty({batch * opt.max_per_image * static_cast<int64_t>(sizeof(DeviceBox<acc_t>))},
                              scores.options().dtype(at::kByte));
  auto kept_classes = at::empty({batch * opt.max_per_image}, int_opts);
  multiclass_nms_kernel<scalar_t><<<static_cast<unsigned>(batch), kChunk, 0, stream>>>(
      boxes.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(), sorted_flat.const_data_ptr<int32_t>(),
      offsets.const_data_ptr<int32_t>(), layout, threshold_at_or_below<acc_t>(opt.iou_threshold),
      reinterpret_cast<DeviceBox<acc_t>*>(kept_boxes.mutable_data_ptr()), kept_classes.mutable_data_ptr<int32_t>(),
      out_boxes.mutable_data_ptr<scalar_t>(), out_scores.mutable_data_ptr<scalar_t>(),
      out_labels.mutable_data_ptr<int64_t>(), num_detections.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cuda(
    const at::Tensor& boxes_in, const at::Tensor& scores_in, double score_threshold, double iou_threshold,
    int64_t max_per_image, bool class_agnostic, int64_t pre_nms_topk) {
  const MulticlassNmsOptions opt{score_threshold, iou_threshold, max_per_image, class_agnostic, pre_nms_topk};
  check_multiclass_nms_args(boxes_in, scores_in, opt);
  TORCH_CHECK_VALUE(scores_in.numel() < std::numeric_limits<int32_t>::max(),
                    "multiclass_nms on CUDA supports fewer than 2^31 scores, got ", scores_in.numel());
  TORCH_CHECK_VALUE(scores_in.size(0) <= std::numeric_limits<int32_t>::max(), "too many images: ", scores_in.size(0));
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const auto boxes = boxes_in.contiguous();
  const auto scores = scores_in.contiguous();
  const int64_t batch = scores.size(0);
  auto out_boxes = at::empty({batch, max_per_image, 4}, boxes.options());
  auto out_scores = at::empty({batch, max_per_image}, scores.options());
  auto out_labels = at::empty({batch, max_per_image}, scores.options().dtype(at::kLong));
  auto num_detections = at::empty({batch}, scores.options().dtype(at::kLong));
  if (batch == 0) return {out_boxes, out_scores, out_labels, num_detections};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "multiclass_nms_cuda", [&] {
    multiclass_nms_cuda_typed<scalar_t>(boxes, scores, opt, out_boxes, out_scores, out_labels, num_detections);
  });
  return {out_boxes, out_scores, out_labels, num_detections};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("multiclass_nms", &multiclass_nms_cuda);
}

}  // namespace pydet
