// CUDA kernels for greedy non-maximum suppression (same semantics as csrc/cpu/nms_kernel.cpp, bit for
// bit: IoU products are rounded separately so no FMA contraction changes a comparison).
//
// nms / batched_nms: boxes are sorted by (class, score desc, index) with cub's stable radix sorts; IoU
// bitmasks are computed in 64x64 tiles only where a tile holds boxes of one class (O(sum n_c^2) work);
// a single-block kernel walks the mask on the device; one host sync at the end sizes the output.
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
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cub/device/device_select.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../common.h"
#include "../nms.h"
#include "cuda_helpers.cuh"

namespace pydet {
namespace {

constexpr int kTile = 64;             // boxes per mask tile = bits per mask word
constexpr int kGatherThreads = 256;   // the single block that walks the mask
constexpr int kChunk = 256;           // candidates per step of the multiclass greedy loop (= threads)
constexpr int kChunkWords = kChunk / 32;
constexpr int64_t kMaxSharedBytes = 48 * 1024;
constexpr int64_t kGatherStaticSharedBytes = 256;  // nms_gather_kernel's __shared__ scalars, with room to spare

// Sort keys for scores: unsigned integers in the order of the values, -0.0 equal to 0.0, NaN lowest.
__device__ __forceinline__ uint32_t score_key(float s) {
  if (s != s) return 0;
  const uint32_t bits = __float_as_uint(s == 0.0f ? 0.0f : s);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ uint64_t score_key(double s) {
  if (s != s) return 0;
  const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(s == 0.0 ? 0.0 : s));
  return (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
}

template <typename T>
using score_key_t = std::conditional_t<std::is_same_v<T, double>, uint64_t, uint32_t>;

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
struct DeviceBox {
  T x1, y1, x2, y2, area;
};

template <typename T>
__device__ __forceinline__ DeviceBox<T> make_box(T x1, T y1, T x2, T y2) {
  return {x1, y1, x2, y2, mul_rn(x2 - x1, y2 - y1)};
}

// torchvision's test: inter / (area_a + area_b - inter) > threshold (threshold_at_or_below'd).
template <typename T>
__device__ __forceinline__ bool iou_above(const DeviceBox<T>& a, const DeviceBox<T>& b, T threshold) {
  const T w = fmax(fmin(a.x2, b.x2) - fmax(a.x1, b.x1), T(0));
  const T h = fmax(fmin(a.y2, b.y2) - fmax(a.y1, b.y1), T(0));
  const T inter = mul_rn(w, h);
  return inter / (a.area + b.area - inter) > threshold;
}

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

// For each processing position q (class-major, score order inside a class): its box, whether its
// score is NaN (such boxes start out removed) and the last mask word of its class.
template <typename scalar_t, typename key_t>
__global__ void nms_prepare_kernel(const scalar_t* __restrict__ boxes, const key_t* __restrict__ keys_by_rank,
                                   const int32_t* __restrict__ order, const int32_t* __restrict__ rank_of,
                                   const uint64_t* __restrict__ class_keys, int64_t n,
                                   at::opmath_type<scalar_t>* __restrict__ sorted_boxes,
                                   unsigned long long* __restrict__ invalid, int32_t* __restrict__ last_word) {
  using acc_t = at::opmath_type<scalar_t>;
  PYDET_CUDA_1D_LOOP(q, n) {
    const int64_t r = rank_of ? rank_of[q] : q;
    const int64_t i = order[r];
    for (int k = 0; k < 4; ++k) sorted_boxes[4 * q + k] = static_cast<acc_t>(boxes[4 * i + k]);
    if (keys_by_rank[r] == 0) atomicOr(invalid + (q >> 6), 1ull << (q & 63));
    int64_t end = n;
    if (class_keys) {  // first position of a later class
      const uint64_t key = class_keys[q];
      int64_t lo = q + 1;
      while (lo < end) {
        const int64_t mid = lo + (end - lo) / 2;
        if (class_keys[mid] <= key) lo = mid + 1; else end = mid;
      }
    }
    last_word[q] = static_cast<int32_t>((end - 1) >> 6);
  }
}

// mask[i][w] bit j: box i suppresses box 64 * w + j (a later box of the same class with IoU > threshold).
template <typename T>
__global__ void __launch_bounds__(kTile) nms_mask_kernel(const T* __restrict__ boxes,
                                                         const uint64_t* __restrict__ class_keys, int64_t n,
                                                         int64_t words, T threshold, uint64_t* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int64_t row_start = row_block * kTile, col_start = col_block * kTile;
  const int rows = static_cast<int>(std::min<int64_t>(n - row_start, kTile));
  const int cols = static_cast<int>(std::min<int64_t>(n - col_start, kTile));
  // Classes are sorted, so a later column block shares a class with this row block only if its
  // first box has the class of the row block's last box. Skipped tiles are never read.
  if (class_keys && col_block != row_block && class_keys[col_start] != class_keys[row_start + rows - 1]) return;

  __shared__ DeviceBox<T> col_boxes[kTile];
  __shared__ uint64_t col_classes[kTile];
  const int t = threadIdx.x;
  if (t < cols) {
    const T* b = boxes + 4 * (col_start + t);
    col_boxes[t] = make_box(b[0], b[1], b[2], b[3]);
    col_classes[t] = class_keys ? class_keys[col_start + t] : 0;
  }
  __syncthreads();
  if (t >= rows) return;
  const T* b = boxes + 4 * (row_start + t);
  const DeviceBox<T> row = make_box(b[0], b[1], b[2], b[3]);
  const uint64_t row_class = class_keys ? class_keys[row_start + t] : 0;
  uint64_t bits = 0;
  for (int j = col_block == row_block ? t + 1 : 0; j < cols; ++j) {
    if (col_classes[j] == row_class && iou_above(row, col_boxes[j], threshold)) bits |= 1ull << j;
  }
  mask[(row_start + t) * words + col_block] = bits;
}

// Walks the mask in 64-box steps: warp 0 resolves a step's boxes among themselves from the diagonal
// words (held in registers, shuffled), then all threads fold the kept boxes' rows into the removed
// words of later steps, up to the end of each box's class. Two barriers per 64 boxes.
__global__ void __launch_bounds__(kGatherThreads) nms_gather_kernel(
    const uint64_t* __restrict__ mask, const uint64_t* __restrict__ invalid, const int32_t* __restrict__ last_word,
    int64_t n, int64_t words, uint64_t* global_removed, uint64_t* __restrict__ kept_words) {
  extern __shared__ uint64_t shared_removed[];
  __shared__ uint64_t step_kept;
  uint64_t* removed = global_removed ? global_removed : shared_removed;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) removed[w] = invalid[w];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int64_t step = 0; step < words; ++step) {
    const int64_t first = step * kTile;
    const int rows = static_cast<int>(std::min<int64_t>(n - first, kTile));
    if (threadIdx.x < 32) {
      const uint64_t diag_lo = lane < rows ? mask[(first + lane) * words + step] : 0;
      const uint64_t diag_hi = lane + 32 < rows ? mask[(first + lane + 32) * words + step] : 0;
      uint64_t gone = removed[step];
      uint64_t kept = 0;
      for (int k = 0; k < rows; ++k) {
        const uint64_t diag = __shfl_sync(0xffffffffu, k < 32 ? diag_lo : diag_hi, k & 31);
        if (!((gone >> k) & 1)) {
          kept |= 1ull << k;
          gone |= diag;
        }
      }
      if (lane == 0) {
        step_kept = kept;
        kept_words[step] = kept;
      }
    }
    __syncthreads();
    const uint64_t kept = step_kept;
    // The last kept box has the furthest class end (classes are sorted).
    const int64_t last = kept ? last_word[first + 63 - __clzll(static_cast<long long>(kept))] : step;
    for (int64_t w = step + 1 + threadIdx.x; w <= last; w += blockDim.x) {
      uint64_t acc = removed[w];
      for (uint64_t bits = kept; bits != 0; bits &= bits - 1) {
        const int64_t i = first + __ffsll(static_cast<long long>(bits)) - 1;
        if (w <= last_word[i]) acc |= mask[i * words + w];
      }
      removed[w] = acc;
    }
    __syncthreads();
  }
}

__global__ void kept_by_rank_kernel(const uint64_t* __restrict__ kept_words, const int32_t* __restrict__ rank_of,
                                    int64_t n, uint8_t* __restrict__ kept) {
  PYDET_CUDA_1D_LOOP(q, n) {
    kept[rank_of ? rank_of[q] : q] = static_cast<uint8_t>((kept_words[q >> 6] >> (q & 63)) & 1);
  }
}

template <typename scalar_t>
at::Tensor nms_cuda_typed(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                          double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  using key_t = score_key_t<acc_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0);
  const int64_t words = cuda::ceil_div(n, kTile);
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

  const at::Tensor sorted_boxes = at::empty({n, 4}, boxes.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  auto invalid = at::zeros({words}, long_opts);
  auto last_word = at::empty({n}, int_opts);
  nms_prepare_kernel<<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
      boxes.const_data_ptr<scalar_t>(), reinterpret_cast<const key_t*>(keys_by_rank.const_data_ptr()),
      order.const_data_ptr<int32_t>(), rank_ptr, class_ptr, n, sorted_boxes.mutable_data_ptr<acc_t>(),
      reinterpret_cast<unsigned long long*>(invalid.mutable_data_ptr()), last_word.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto mask = at::empty({n, words}, long_opts);
  auto* mask_ptr = reinterpret_cast<uint64_t*>(mask.mutable_data_ptr());
  nms_mask_kernel<<<dim3(static_cast<unsigned>(words), static_cast<unsigned>(words)), kTile, 0, stream>>>(
      sorted_boxes.const_data_ptr<acc_t>(), class_ptr, n, words, threshold_at_or_below<acc_t>(iou_threshold),
      mask_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto kept_words = at::empty({words}, long_opts);
  // The kernel's own static shared memory counts against the same 48 KiB as the dynamic part.
  const bool in_shared = words * 8 + kGatherStaticSharedBytes <= kMaxSharedBytes;
  at::Tensor removed = in_shared ? at::Tensor() : at::empty({words}, long_opts);
  nms_gather_kernel<<<1, kGatherThreads, in_shared ? words * 8 : 0, stream>>>(
      mask_ptr, reinterpret_cast<const uint64_t*>(invalid.const_data_ptr()), last_word.const_data_ptr<int32_t>(), n,
      words, in_shared ? nullptr : reinterpret_cast<uint64_t*>(removed.mutable_data_ptr()),
      reinterpret_cast<uint64_t*>(kept_words.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Kept original indices in score order; the one host sync reads their count.
  auto kept = at::empty({n}, boxes.options().dtype(at::kByte));
  kept_by_rank_kernel<<<cuda::blocks_for(n), cuda::kThreadsPerBlock, 0, stream>>>(
      reinterpret_cast<const uint64_t*>(kept_words.const_data_ptr()), rank_ptr, n,
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
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const int64_t n = boxes_in.size(0);
  if (n == 0) return at::empty({0}, boxes_in.options().dtype(at::kLong));
  // The mask grid has one row of tiles per 64 boxes (gridDim.y).
  TORCH_CHECK_VALUE(cuda::ceil_div(n, kTile) <= 65535, "nms on CUDA supports up to ", 65535 * kTile,
                    " boxes, got ", n);
  const auto boxes = boxes_in.contiguous();
  const auto scores = scores_in.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    out = nms_cuda_typed<scalar_t>(boxes, scores, idxs, iou_threshold);
  });
  return out;
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args(boxes, scores, iou_threshold);
  return nms_cuda_common(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_nms_args(boxes, scores, iou_threshold);
  check_nms_idxs(boxes, idxs);
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
      box = make_box<acc_t>(src[0], src[1], src[2], src[3]);
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
