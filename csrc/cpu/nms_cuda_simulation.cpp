// The CUDA nms/batched_nms algorithm (csrc/cuda/nms_kernel.cu) replayed on the CPU for the tests:
// the same index logic and math (csrc/nms.h, segmented_nms), each kernel's grid and threads replayed by
// loops, cub's stable sorts and scans by their std equivalents. tests/ops/test_nms.py compares it with
// the CPU kernel on boundary cases (segments of 1, 64, 65 boxes, tile edges, nothing kept), so the
// segment/tile/word logic of the GPU kernels is exercised on machines without a GPU.
// Registered as pydet::_simulate_cuda_nms (not part of the public API).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "../nms.h"

namespace pydet {
namespace {

using segmented_nms::kTile;

constexpr int kMaxWalkWarps = 8;  // as in nms_kernel.cu

// Sorted positions (class-major, score order inside a class) and their segment tables.
struct SimulatedLayout {
  std::vector<int32_t> order, rank_of;  // rank -> box; position -> rank (empty: identity)
  std::vector<uint64_t> class_keys;     // by position (empty: one class)
  std::vector<int32_t> seg_begin, seg_end, chunk_id, chunk_first;
  std::vector<int64_t> row_offset;
  int64_t chunks = 0, longest = 0;

  segmented_nms::SegmentTables tables() const {
    return {seg_begin.data(), seg_end.data(), row_offset.data(), chunk_id.data(), chunk_first.data()};
  }
  int64_t rank(int64_t q) const { return rank_of.empty() ? q : rank_of[q]; }
};

// The two stable radix sorts of nms_cuda_typed.
template <typename T>
void sort_positions(const T* scores, const int64_t* idxs, int64_t n, SimulatedLayout& l) {
  std::vector<score_key_t<T>> keys(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = score_key(scores[i]);
  l.order.resize(n);
  std::iota(l.order.begin(), l.order.end(), 0);
  std::stable_sort(l.order.begin(), l.order.end(), [&](int32_t a, int32_t b) { return keys[a] > keys[b]; });
  if (!idxs) return;
  std::vector<uint64_t> unsorted(n);
  for (int64_t p = 0; p < n; ++p) unsorted[p] = static_cast<uint64_t>(idxs[l.order[p]]) ^ 0x8000000000000000ull;
  l.rank_of.resize(n);
  std::iota(l.rank_of.begin(), l.rank_of.end(), 0);
  std::stable_sort(l.rank_of.begin(), l.rank_of.end(),
                   [&](int32_t a, int32_t b) { return unsorted[a] < unsorted[b]; });
  l.class_keys.resize(n);
  for (int64_t q = 0; q < n; ++q) l.class_keys[q] = unsorted[l.rank_of[q]];
}

// nms_prepare_kernel, the two scans, nms_sizes_kernel and nms_chunks_kernel's chunk starts.
void build_tables(int64_t n, SimulatedLayout& l) {
  const uint64_t* class_keys = l.class_keys.empty() ? nullptr : l.class_keys.data();
  l.seg_begin.resize(n);
  l.seg_end.resize(n);
  std::vector<int64_t> row_words(n + 1, 0);
  std::vector<int32_t> heads(n);
  for (int64_t q = 0; q < n; ++q) {
    int64_t begin, end;
    segmented_nms::segment_of(class_keys, n, q, begin, end);
    l.seg_begin[q] = static_cast<int32_t>(begin);
    l.seg_end[q] = static_cast<int32_t>(end);
    row_words[q] = segmented_nms::row_words(begin, end);
    heads[q] = segmented_nms::starts_chunk(q, begin);
    if (q == begin) l.longest = std::max(l.longest, segmented_nms::chunks_of(end - begin));
  }
  l.row_offset.assign(n + 1, 0);
  std::exclusive_scan(row_words.begin(), row_words.end(), l.row_offset.begin(), int64_t{0});
  l.chunk_id.resize(n);
  std::inclusive_scan(heads.begin(), heads.end(), l.chunk_id.begin());
  for (auto& c : l.chunk_id) c -= 1;
  l.chunks = l.chunk_id[n - 1] + 1;
  l.chunk_first.assign(l.chunks, -1);
  for (int64_t q = 0; q < n; ++q) {
    if (segmented_nms::starts_chunk(q, l.seg_begin[q])) l.chunk_first[l.chunk_id[q]] = static_cast<int32_t>(q);
  }
}

// nms_mask_kernel over its grid (chunks x longest) and kTile threads; `cols` plays the shared tile.
template <typename T>
std::vector<uint64_t> build_mask(const SimulatedLayout& l, const std::vector<AreaBox<T>>& boxes, T threshold) {
  const auto t = l.tables();
  std::vector<uint64_t> mask(l.row_offset.back(), 0xdeadbeefdeadbeefull);  // unwritten words must not be read
  for (int64_t r = 0; r < l.chunks; ++r) {
    for (int64_t y = 0; y < l.longest; ++y) {
      segmented_nms::MaskTile tile;
      if (!segmented_nms::mask_tile(t, r, y, tile)) continue;
      AreaBox<T> cols[kTile];
      for (int i = 0; i < tile.cols; ++i) cols[i] = boxes[tile.first_col + i];
      for (int i = 0; i < tile.rows; ++i) {
        const int64_t q = tile.first_row + i;
        mask[t.row_offset[q] + tile.chunk] = segmented_nms::tile_row_bits(boxes[q], i, cols, tile, threshold);
      }
    }
  }
  return mask;
}

// nms_walk_kernel: every block, its warps and lanes, step by step.
std::vector<uint64_t> walk(const SimulatedLayout& l, const std::vector<uint64_t>& mask, std::vector<uint64_t> removed) {
  const auto t = l.tables();
  const int warps = static_cast<int>(std::clamp<int64_t>(l.longest - 1, 1, kMaxWalkWarps));
  std::vector<uint64_t> kept_words(l.chunks, 0);
  for (int64_t r = 0; r < l.chunks; ++r) {
    int64_t begin, end;
    if (!segmented_nms::segment_walk(t, r, begin, end)) continue;
    const int64_t steps = segmented_nms::chunks_of(end - begin);
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t first = begin + step * kTile;
      const int rows = static_cast<int>(std::min<int64_t>(end - first, kTile));
      uint64_t lo[32], hi[32];  // warp 0's registers
      for (int lane = 0; lane < 32; ++lane) {
        lo[lane] = lane < rows ? mask[t.row_offset[first + lane] + step] : 0;
        hi[lane] = lane + 32 < rows ? mask[t.row_offset[first + lane + 32] + step] : 0;
      }
      const uint64_t kept =
          segmented_nms::resolve_step(removed[r + step], rows, [&](int k) { return k < 32 ? lo[k] : hi[k - 32]; });
      kept_words[r + step] = kept;
      for (int warp = 0; warp < warps; ++warp) {
        for (int64_t w = step + 1 + warp; kept != 0 && w < steps; w += warps) {
          uint64_t acc = 0;
          for (int lane = 0; lane < 32; ++lane) {
            acc |= segmented_nms::fold_share(kept, lane, [&](int k) { return mask[t.row_offset[first + k] + w]; });
          }
          removed[r + w] |= acc;
        }
      }
    }
  }
  return kept_words;
}

template <typename T>
std::vector<int64_t> simulate(const T* boxes, const T* scores, const int64_t* idxs, int64_t n, double iou_threshold) {
  SimulatedLayout l;
  sort_positions(scores, idxs, n, l);
  build_tables(n, l);
  std::vector<AreaBox<T>> sorted(n);
  std::vector<uint64_t> removed(l.chunks, 0);
  for (int64_t q = 0; q < n; ++q) {
    const int64_t i = l.order[l.rank(q)];
    sorted[q] = area_box<T>(boxes + 4 * i);
    if (score_key(scores[i]) == 0) removed[l.chunk_id[q]] |= segmented_nms::chunk_bit(q, l.seg_begin[q]);
  }
  const auto mask = build_mask(l, sorted, threshold_at_or_below<T>(iou_threshold));
  const auto kept_words = walk(l, mask, std::move(removed));
  std::vector<uint8_t> kept(n);
  for (int64_t q = 0; q < n; ++q) {
    kept[l.rank(q)] = (kept_words[l.chunk_id[q]] & segmented_nms::chunk_bit(q, l.seg_begin[q])) != 0;
  }
  std::vector<int64_t> out;
  for (int64_t r = 0; r < n; ++r) {
    if (kept[r]) out.push_back(l.order[r]);
  }
  return out;
}

at::Tensor simulate_cuda_nms(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                             const std::optional<at::Tensor>& idxs_in, double iou_threshold) {
  check_nms_args(boxes_in, scores_in, idxs_in ? &*idxs_in : nullptr, iou_threshold);
  const auto dtype = boxes_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto boxes = boxes_in.to(at::kCPU, dtype).contiguous();
  const auto scores = scores_in.to(at::kCPU, dtype).contiguous();
  const auto idxs = idxs_in ? idxs_in->to(at::kCPU, at::kLong).contiguous() : at::Tensor();
  const int64_t n = boxes.size(0);
  std::vector<int64_t> kept;
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "simulate_cuda_nms", [&] {
      kept = simulate(boxes.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
                      idxs.defined() ? idxs.const_data_ptr<int64_t>() : nullptr, n, iou_threshold);
    });
  }
  auto out = at::empty({static_cast<int64_t>(kept.size())}, boxes.options().dtype(at::kLong));
  std::copy(kept.begin(), kept.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pydet, m) {
  m.def("_simulate_cuda_nms(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(pydet, CompositeExplicitAutograd, m) {
  m.impl("_simulate_cuda_nms", &simulate_cuda_nms);
}

}  // namespace pydet
