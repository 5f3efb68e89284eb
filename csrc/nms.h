// Shared by the CPU and CUDA NMS kernels: argument checks, the exact threshold comparison, the IoU test,
// score sort keys, and the index logic of the CUDA algorithm (replayed on the CPU by the tests).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "boxes.h"
#include "common.h"

namespace pydet {

// The largest T that is <= t. For every T value v, `v > t` compared exactly (as torchvision's CPU
// kernel does, promoting to double) equals `v > threshold_at_or_below<T>(t)`, so kernels can compare
// in T and still agree with a float64 reference.
template <typename T>
T threshold_at_or_below(double t) {
  T v = static_cast<T>(t);
  if (static_cast<double>(v) > t) v = std::nextafter(v, -std::numeric_limits<T>::infinity());
  return v;
}

// The suppression test of greedy NMS (CPU and CUDA): IoU > threshold (threshold_at_or_below'd).
template <typename T>
C10_HOST_DEVICE inline bool iou_above(const AreaBox<T>& a, const AreaBox<T>& b, T threshold) {
  return area_box_iou(a, b) > threshold;
}

template <typename T>
using score_key_t = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

// Sort keys for scores (CPU and CUDA): unsigned integers in the order of the values, -0.0 equal to 0.0,
// NaN lowest (key 0, which no other value has).
template <typename T>
C10_HOST_DEVICE inline score_key_t<T> score_key(T s) {
  using Key = score_key_t<T>;
  constexpr Key sign = Key{1} << (8 * sizeof(Key) - 1);
  if (s != s) return 0;
  const T v = s == T(0) ? T(0) : s;
  Key bits;
  memcpy(&bits, &v, sizeof(Key));
  return (bits & sign) ? static_cast<Key>(~bits) : static_cast<Key>(bits | sign);
}

// ---- the index logic of the CUDA nms/batched_nms kernels (csrc/cuda/nms_kernel.cu) ----
// Written once here so that the CPU simulation of the kernels (csrc/cpu/nms_cuda_simulation.cpp, run by
// the tests) executes the same code with the launch geometry replayed by loops.
//
// Boxes are sorted class-major (score order inside a class); a class is a segment [begin, end) of
// positions, cut into chunks of 64 boxes (a mask word, a tile row, a step of the greedy walk). Chunks
// are numbered globally, a segment's chunks consecutively. Box q's mask row holds one word per chunk of
// its segment, at row_offset[q] (an exclusive scan of the row lengths): sum over classes of n_c^2 bits.
namespace segmented_nms {

constexpr int kTile = 64;

C10_HOST_DEVICE inline int64_t chunks_of(int64_t boxes) { return (boxes + kTile - 1) / kTile; }

// The segment [begin, end) holding sorted position q (class_keys ascending; null: one segment).
C10_HOST_DEVICE inline void segment_of(const uint64_t* class_keys, int64_t n, int64_t q, int64_t& begin,
                                       int64_t& end) {
  begin = 0;
  end = n;
  if (class_keys == nullptr) return;
  const uint64_t key = class_keys[q];
  int64_t lo = q + 1, hi = n;  // first position of a later class
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (class_keys[mid] <= key) lo = mid + 1; else hi = mid;
  }
  end = lo;
  lo = 0;
  hi = q;  // first position of this class
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (class_keys[mid] < key) lo = mid + 1; else hi = mid;
  }
  begin = lo;
}

// Per-position and per-chunk tables of the segmented mask (device pointers on the GPU).
struct SegmentTables {
  const int32_t* seg_begin;    // [n] first position of q's segment
  const int32_t* seg_end;      // [n] one past its last
  const int64_t* row_offset;   // [n + 1] first mask word of q's row; [n]: the mask's size
  const int32_t* chunk_id;     // [n] global chunk of q
  const int32_t* chunk_first;  // [chunks] first position of each chunk
};

// What the scans need from position q of segment [begin, end): its row length in words and whether it
// starts a chunk.
C10_HOST_DEVICE inline int64_t row_words(int64_t begin, int64_t end) { return chunks_of(end - begin); }
C10_HOST_DEVICE inline bool starts_chunk(int64_t q, int64_t begin) { return (q - begin) % kTile == 0; }

// Bit of position q in its chunk's words (removed, kept).
C10_HOST_DEVICE inline uint64_t chunk_bit(int64_t q, int64_t begin) { return uint64_t{1} << ((q - begin) % kTile); }

// The tile (row chunk r, its y-th chunk to the right in the same segment) of the mask kernel's grid
// (chunks x max chunks per segment), 64 threads: thread t computes row box first_row + t.
struct MaskTile {
  int64_t first_row, first_col, chunk;  // chunk: the column chunk, relative to the segment
  int rows, cols;
  bool diagonal;
};

// False when the tile lies past the end of the row's segment (the grid is sized for the longest).
C10_HOST_DEVICE inline bool mask_tile(const SegmentTables& t, int64_t r, int64_t y, MaskTile& tile) {
  const int64_t first = t.chunk_first[r], begin = t.seg_begin[first], end = t.seg_end[first];
  const int64_t row_chunk = (first - begin) / kTile;
  tile.chunk = row_chunk + y;
  if (tile.chunk >= chunks_of(end - begin)) return false;
  tile.first_row = first;
  tile.first_col = begin + tile.chunk * kTile;
  tile.rows = static_cast<int>(end - first < kTile ? end - first : kTile);
  tile.cols = static_cast<int>(end - tile.first_col < kTile ? end - tile.first_col : kTile);
  tile.diagonal = y == 0;
  return true;
}

// Mask word of a row box against a tile's column boxes: bit j when it suppresses column box j. On the
// diagonal only the later boxes (j > t) count.
template <typename T>
C10_HOST_DEVICE inline uint64_t tile_row_bits(const AreaBox<T>& row, int t, const AreaBox<T>* cols,
                                              const MaskTile& tile, T threshold) {
  uint64_t bits = 0;
  for (int j = tile.diagonal ? t + 1 : 0; j < tile.cols; ++j) {
    if (iou_above(row, cols[j], threshold)) bits |= uint64_t{1} << j;
  }
  return bits;
}

// The greedy walk of one segment runs in the block of its first chunk r (other blocks return).
C10_HOST_DEVICE inline bool segment_walk(const SegmentTables& t, int64_t r, int64_t& begin, int64_t& end) {
  const int64_t first = t.chunk_first[r];
  begin = t.seg_begin[first];
  end = t.seg_end[first];
  return first == begin;
}

// Resolves a 64-box step: `removed` marks boxes suppressed before it, diag(k) is box k's word for this
// step (boxes it suppresses among the later ones of the step). Returns the kept boxes. diag is called
// for every k by every caller (on the device: a warp shuffle, which all lanes must reach).
template <typename Diag>
C10_HOST_DEVICE inline uint64_t resolve_step(uint64_t removed, int rows, Diag diag) {
  uint64_t kept = 0;
  for (int k = 0; k < rows; ++k) {
    const uint64_t d = diag(k);
    if (!((removed >> k) & 1)) {
      kept |= uint64_t{1} << k;
      removed |= d;
    }
  }
  return kept;
}

// Lane `lane`'s share of folding a step's kept boxes into a later word: the rows of kept boxes lane and
// lane + 32 (row_word(i) reads box i's word). The warp ORs the 32 shares.
template <typename RowWord>
C10_HOST_DEVICE inline uint64_t fold_share(uint64_t kept, int lane, RowWord row_word) {
  uint64_t acc = 0;
  if ((kept >> lane) & 1) acc |= row_word(lane);
  if ((kept >> (lane + 32)) & 1) acc |= row_word(lane + 32);
  return acc;
}

}  // namespace segmented_nms

struct MulticlassNmsOptions {
  double score_threshold;
  double iou_threshold;
  int64_t max_per_image;
  bool class_agnostic;
  int64_t pre_nms_topk;  // < 0: no limit
};

// nms (idxs null) and batched_nms.
inline void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                           double iou_threshold) {
  check_boxes(boxes, "boxes");
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0),
                    "scores must have shape [N] matching boxes [N, 4], got ", scores.sizes(), " and ",
                    boxes.sizes());
  check_same_dtype(boxes, "boxes", scores, "scores");
  check_same_device(boxes, "boxes", scores, "scores");
  TORCH_CHECK_VALUE(!std::isnan(iou_threshold), "iou_threshold must not be NaN");
  if (!idxs) return;
  TORCH_CHECK_VALUE(idxs->dim() == 1 && idxs->size(0) == boxes.size(0),
                    "idxs must have shape [N] matching boxes [N, 4], got ", idxs->sizes(), " and ", boxes.sizes());
  TORCH_CHECK_VALUE(at::isIntegralType(idxs->scalar_type(), /*includeBool=*/false),
                    "idxs must be an integer tensor, got ", idxs->scalar_type());
  check_same_device(boxes, "boxes", *idxs, "idxs");
}

inline void check_multiclass_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                                      const MulticlassNmsOptions& opt) {
  TORCH_CHECK_VALUE(scores.dim() == 3, "scores must have shape [B, N, C], got ", scores.sizes());
  check_floating(scores, "scores");
  const bool shared = boxes.dim() == 3 && boxes.size(0) == scores.size(0) && boxes.size(1) == scores.size(1) &&
                      boxes.size(2) == 4;
  const bool per_class = boxes.dim() == 4 && boxes.size(0) == scores.size(0) &&
                         boxes.size(1) == scores.size(1) && boxes.size(2) == scores.size(2) && boxes.size(3) == 4;
  TORCH_CHECK_VALUE(shared || per_class, "boxes must have shape [B, N, 4] or [B, N, C, 4] for scores ",
                    scores.sizes(), ", got ", boxes.sizes());
  check_same_dtype(boxes, "boxes", scores, "scores");
  check_same_device(boxes, "boxes", scores, "scores");
  TORCH_CHECK_VALUE(!std::isnan(opt.score_threshold), "score_threshold must not be NaN");
  TORCH_CHECK_VALUE(!std::isnan(opt.iou_threshold), "iou_threshold must not be NaN");
  TORCH_CHECK_VALUE(opt.max_per_image > 0, "max_per_image must be positive, got ", opt.max_per_image);
  TORCH_CHECK_VALUE(opt.pre_nms_topk != 0, "pre_nms_topk must be positive (or negative for no limit), got 0");
}

}  // namespace pydet
