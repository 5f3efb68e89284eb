// CPU kernels for greedy non-maximum suppression: nms, batched_nms (class-aware) and multiclass_nms
// (batched over images, fixed-size output). Semantics: torchvision's greedy NMS (a box is suppressed by
// a kept, higher-ranked box when IoU > iou_threshold, IoU computed in the boxes' opmath type exactly as
// torchvision writes it), ranks by decreasing score with ties in index order, NaN scores dropped.
//
// Speed comes from testing each candidate only against the boxes already kept (not every later box
// against every kept one, as torchvision's O(N^2) loop does) and only against the kept boxes whose x
// range can overlap the candidate's: the boxes of a class are indexed by x1, a prefix maximum of x2
// gives the first one that can reach the candidate, and a bitmap over that order marks the kept ones.
// Pairs outside that window do not overlap, so their IoU is 0 or NaN and can never exceed a threshold
// >= 0: the result is the same as the exhaustive loop. Classes (and images) run in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "../nms.h"

namespace pydet {
namespace {

// Greedy NMS over the boxes of one class, visited best first. Reusable: buffers grow once per thread.
template <typename T>
class GreedyNms {
 public:
  explicit GreedyNms(double iou_threshold)
      : threshold_(threshold_at_or_below<T>(iou_threshold)), prune_(iou_threshold >= 0) {}

  // Visits rows[0..n) of boxes ([*, 4]) in that order and sets keep[p] = 1 for each kept one.
  void run(const T* boxes, const int64_t* rows, int64_t n, uint8_t* keep) {
    index_boxes(boxes, rows, n);
    const int64_t m = static_cast<int64_t>(by_x_.size());
    kept_.assign((m + 63) / 64, 0);
    for (int64_t p = 0; p < n; ++p) {
      const int32_t r = rank_[p];
      if (r < 0 || !suppressed(r, m)) {
        keep[p] = 1;
        if (r >= 0) kept_[r >> 6] |= uint64_t{1} << (r & 63);
      }
    }
  }

 private:
  // Orders the boxes by x1 (when pruning). Without a positive area a box can neither suppress nor be
  // suppressed at a threshold >= 0 (its IoU with anything is 0 or NaN): it gets rank -1 and is kept.
  void index_boxes(const T* boxes, const int64_t* rows, int64_t n) {
    rank_.resize(n);
    by_x_.clear();
    for (int64_t p = 0; p < n; ++p) {
      const T* b = boxes + 4 * rows[p];
      const T area = (b[2] - b[0]) * (b[3] - b[1]);
      if (prune_ && !(area > 0)) {
        rank_[p] = -1;
        continue;
      }
      by_x_.push_back({b[0], static_cast<int32_t>(p)});
    }
    // No NaN can reach the sort: a positive area implies finite-or-infinite, non-NaN coordinates.
    if (prune_) std::sort(by_x_.begin(), by_x_.end());
    const int64_t m = static_cast<int64_t>(by_x_.size());
    sorted_.resize(m);
    max_x2_.resize(m);
    for (int64_t r = 0; r < m; ++r) {
      const int32_t p = by_x_[r].second;
      const T* b = boxes + 4 * rows[p];
      sorted_[r] = area_box<T>(b);
      max_x2_[r] = r == 0 ? b[2] : std::max(max_x2_[r - 1], b[2]);
      rank_[p] = static_cast<int32_t>(r);
    }
  }

  // Whether a kept box suppresses the box of x-rank r.
  bool suppressed(int32_t r, int64_t m) const {
    const AreaBox<T>& c = sorted_[r];
    int64_t lo = 0, hi = m;
    if (prune_) {
      // Kept boxes that may overlap c in x: some box up to here reaches past c.x1, and x1 < c.x2.
      lo = std::upper_bound(max_x2_.begin(), max_x2_.end(), c.x1) - max_x2_.begin();
      hi = std::ranges::lower_bound(sorted_, c.x2, {}, &AreaBox<T>::x1) - sorted_.begin();
    }
    for (int64_t w = lo >> 6, w_end = (hi + 63) >> 6; w < w_end; ++w) {
      uint64_t bits = kept_[w];
      if (w == lo >> 6) bits &= ~uint64_t{0} << (lo & 63);
      if (w == w_end - 1 && (hi & 63) != 0) bits &= (uint64_t{1} << (hi & 63)) - 1;
      if (!prune_) {
        for (; bits != 0; bits &= bits - 1) {
          if (iou_above(sorted_[(w << 6) + std::countr_zero(bits)], c)) return true;
        }
        continue;
      }
      // Most kept boxes in the window miss c in y or x: a branch-free filter first, IoU for the rest.
      int32_t overlapping[64];
      int count = 0;
      for (; bits != 0; bits &= bits - 1) {
        const int32_t k = static_cast<int32_t>((w << 6) + std::countr_zero(bits));
        const AreaBox<T>& b = sorted_[k];
        overlapping[count] = k;
        count += (std::min(b.x2, c.x2) > std::max(b.x1, c.x1)) & (std::min(b.y2, c.y2) > std::max(b.y1, c.y1));
      }
      for (int i = 0; i < count; ++i) {
        if (iou_above(sorted_[overlapping[i]], c)) return true;
      }
    }
    return false;
  }

  bool iou_above(const AreaBox<T>& a, const AreaBox<T>& b) const { return pydet::iou_above(a, b, threshold_); }

  const T threshold_;
  const bool prune_;
  std::vector<std::pair<T, int32_t>> by_x_;  // (x1, visit position), sorted
  std::vector<AreaBox<T>> sorted_;        // by x rank
  std::vector<T> max_x2_;                    // prefix maximum of x2 by x rank
  std::vector<int32_t> rank_;                // x rank of each visit position, -1: kept untested
  std::vector<uint64_t> kept_;               // bitmap over x ranks
};

// Runs GreedyNms over consecutive segments [starts[s], starts[s+1]) of rows. Threads take chunks of
// segments (about kChunkBoxes boxes each) from a shared counter rather than a fixed share each: classes
// of very different sizes balance, and a thread that starts late gets less of the work.
template <typename T>
void nms_segments(const T* boxes, const std::vector<int64_t>& rows, const std::vector<int64_t>& starts,
                  double iou_threshold, std::vector<uint8_t>& keep) {
  constexpr int64_t kChunkBoxes = 1024;
  const int64_t n = static_cast<int64_t>(rows.size());
  keep.assign(n, 0);
  std::vector<size_t> chunks{0};  // segment index where each chunk starts
  for (size_t s = 1; s + 1 < starts.size(); ++s) {
    if (starts[s] - starts[chunks.back()] >= kChunkBoxes) chunks.push_back(s);
  }
  chunks.push_back(starts.size() - 1);
  std::atomic<size_t> next_chunk{0};
  const auto run_chunks = [&](int64_t, int64_t) {
    GreedyNms<T> greedy(iou_threshold);
    for (size_t c = next_chunk++; c + 1 < chunks.size(); c = next_chunk++) {
      for (size_t s = chunks[c]; s < chunks[c + 1]; ++s) {
        greedy.run(boxes, rows.data() + starts[s], starts[s + 1] - starts[s], keep.data() + starts[s]);
      }
    }
  };
  if (chunks.size() <= 2) {
    run_chunks(0, 1);
  } else {
    at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), chunks.size() - 1), 1, run_chunks);
  }
}

// Keys that sort ascending in order of decreasing score (no NaN reaches here).
template <typename T>
auto descending_key(T score) {
  return static_cast<score_key_t<T>>(~score_key(score));
}

// Sorts ids by decreasing scores[id], ties by increasing id, keeping the best `limit` (all if < 0).
template <typename T>
void sort_by_decreasing_score(std::vector<int64_t>& ids, const T* scores, int64_t limit = -1) {
  std::vector<std::pair<decltype(descending_key(T())), int64_t>> keyed(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) keyed[i] = {descending_key(scores[ids[i]]), ids[i]};
  if (limit >= 0 && limit < static_cast<int64_t>(keyed.size())) {
    std::nth_element(keyed.begin(), keyed.begin() + limit, keyed.end());
    keyed.resize(limit);
  }
  std::sort(keyed.begin(), keyed.end());
  ids.resize(keyed.size());
  for (size_t i = 0; i < keyed.size(); ++i) ids[i] = keyed[i].second;
}

// Positions 0..m-1 grouped by labels[position], in position order inside a group (a stable sort), and
// the start of each group. Dense labels (class ids) take a counting sort, others a comparison sort.
std::vector<int64_t> group_by_label(const std::vector<int64_t>& labels, std::vector<int64_t>& starts) {
  const int64_t m = static_cast<int64_t>(labels.size());
  std::vector<int64_t> grouped(m);
  starts.clear();
  if (m > 0) {
    const auto [lo, hi] = std::minmax_element(labels.begin(), labels.end());
    const uint64_t span = static_cast<uint64_t>(*hi) - static_cast<uint64_t>(*lo);
    if (span < static_cast<uint64_t>(2 * m + 1024)) {
      std::vector<int64_t> next(span + 2, 0);
      for (const int64_t label : labels) ++next[label - *lo + 1];
      for (size_t g = 1; g < next.size(); ++g) next[g] += next[g - 1];
      for (int64_t p = 0; p < m; ++p) grouped[next[labels[p] - *lo]++] = p;
    } else {
      std::vector<std::pair<int64_t, int64_t>> keyed(m);
      for (int64_t p = 0; p < m; ++p) keyed[p] = {labels[p], p};
      std::sort(keyed.begin(), keyed.end());
      for (int64_t p = 0; p < m; ++p) grouped[p] = keyed[p].second;
    }
    for (int64_t q = 0; q < m; ++q) {
      if (q == 0 || labels[grouped[q]] != labels[grouped[q - 1]]) starts.push_back(q);
    }
  }
  starts.push_back(m);
  return grouped;
}

// Greedy NMS over candidates ranked best first: rows[r] is the box row of rank r, labels[r] its class
// (null: one class). Returns keep flags by rank.
template <typename T>
std::vector<uint8_t> nms_ranked(const T* boxes, const std::vector<int64_t>& rows,
                                const std::vector<int64_t>* labels, double iou_threshold) {
  std::vector<uint8_t> keep;
  if (!labels) {
    nms_segments(boxes, rows, {0, static_cast<int64_t>(rows.size())}, iou_threshold, keep);
    return keep;
  }
  std::vector<int64_t> starts;
  const std::vector<int64_t> grouped = group_by_label(*labels, starts);
  std::vector<int64_t> grouped_rows(rows.size());
  for (size_t q = 0; q < rows.size(); ++q) grouped_rows[q] = rows[grouped[q]];
  std::vector<uint8_t> keep_grouped;
  nms_segments(boxes, grouped_rows, starts, iou_threshold, keep_grouped);
  keep.resize(rows.size());
  for (size_t q = 0; q < rows.size(); ++q) keep[grouped[q]] = keep_grouped[q];
  return keep;
}

// Indices of the kept boxes, best first. `classes` may be null (one class).
template <typename T>
std::vector<int64_t> nms_indices(const T* boxes, const T* scores, const int64_t* classes, int64_t n,
                                 double iou_threshold) {
  std::vector<int64_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isnan(scores[i])) order.push_back(i);
  }
  sort_by_decreasing_score(order, scores);
  std::vector<int64_t> labels;
  if (classes) {
    labels.resize(order.size());
    for (size_t r = 0; r < order.size(); ++r) labels[r] = classes[order[r]];
  }
  const std::vector<uint8_t> keep = nms_ranked(boxes, order, classes ? &labels : nullptr, iou_threshold);
  std::vector<int64_t> out;
  for (size_t r = 0; r < order.size(); ++r) {
    if (keep[r]) out.push_back(order[r]);
  }
  return out;
}

// Boxes and scores in the dtype the kernels compute in (float for half types).
std::tuple<at::Tensor, at::Tensor> opmath_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  const auto dtype = boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {boxes.to(dtype).contiguous(), scores.to(dtype).contiguous()};
}

at::Tensor nms_common(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor* idxs_in,
                      double iou_threshold) {
  check_nms_args(boxes_in, scores_in, idxs_in, iou_threshold);
  const auto [boxes, scores] = opmath_inputs(boxes_in, scores_in);
  const auto idxs = idxs_in ? idxs_in->to(at::kLong).contiguous() : at::Tensor();
  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    kept = nms_indices(boxes.const_data_ptr<scalar_t>(), scores.const_data_ptr<scalar_t>(),
                       idxs_in ? idxs.const_data_ptr<int64_t>() : nullptr, boxes.size(0), iou_threshold);
  });
  auto out = at::empty({static_cast<int64_t>(kept.size())}, boxes_in.options().dtype(at::kLong));
  std::copy(kept.begin(), kept.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_common(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  return nms_common(boxes, scores, &idxs, iou_threshold);
}

// One image of multiclass_nms: writes max_per_image rows of boxes/scores/labels, returns the count.
template <typename T>
int64_t multiclass_nms_image(const T* boxes, const T* scores, int64_t num_boxes, int64_t num_classes,
                             bool boxes_per_class, const MulticlassNmsOptions& opt, T* out_boxes, T* out_scores,
                             int64_t* out_labels) {
  const T score_threshold = threshold_at_or_below<T>(opt.score_threshold);
  std::vector<int64_t> candidates;  // flat ids n * C + c
  const int64_t total = num_boxes * num_classes;
  // Most scores are below the threshold: a branch-free (vectorisable) count per block skips them fast.
  constexpr int64_t kBlock = 64;
  for (int64_t block = 0; block < total; block += kBlock) {
    const int64_t end = std::min(block + kBlock, total);
    int above = 0;
    for (int64_t f = block; f < end; ++f) above += scores[f] > score_threshold;
    if (above == 0) continue;
    for (int64_t f = block; f < end; ++f) {
      if (scores[f] > score_threshold) candidates.push_back(f);
    }
  }
  sort_by_decreasing_score(candidates, scores, opt.pre_nms_topk);

  std::vector<int64_t> rows(candidates.size()), labels(candidates.size());
  for (size_t r = 0; r < candidates.size(); ++r) {
    rows[r] = boxes_per_class ? candidates[r] : candidates[r] / num_classes;
    labels[r] = opt.class_agnostic ? 0 : candidates[r] % num_classes;
  }
  const std::vector<uint8_t> keep = nms_ranked(boxes, rows, &labels, opt.iou_threshold);

  int64_t count = 0;
  for (size_t r = 0; r < candidates.size() && count < opt.max_per_image; ++r) {
    if (!keep[r]) continue;
    std::copy(boxes + 4 * rows[r], boxes + 4 * rows[r] + 4, out_boxes + 4 * count);
    out_scores[count] = scores[candidates[r]];
    out_labels[count] = candidates[r] % num_classes;
    ++count;
  }
  for (int64_t d = count; d < opt.max_per_image; ++d) {
    std::fill(out_boxes + 4 * d, out_boxes + 4 * d + 4, T(0));
    out_scores[d] = T(0);
    out_labels[d] = -1;
  }
  return count;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cpu(
    const at::Tensor& boxes_in, const at::Tensor& scores_in, double score_threshold, double iou_threshold,
    int64_t max_per_image, bool class_agnostic, int64_t pre_nms_topk) {
  const MulticlassNmsOptions opt{score_threshold, iou_threshold, max_per_image, class_agnostic, pre_nms_topk};
  check_multiclass_nms_args(boxes_in, scores_in, opt);
  const auto [boxes, scores] = opmath_inputs(boxes_in, scores_in);
  const int64_t batch = scores.size(0), num_boxes = scores.size(1), num_classes = scores.size(2);
  const bool boxes_per_class = boxes.dim() == 4;
  // Computed in the opmath dtype and converted at the end: exact, the values are copies of the inputs.
  auto out_boxes = at::empty({batch, max_per_image, 4}, boxes.options());
  auto out_scores = at::empty({batch, max_per_image}, scores.options());
  auto out_labels = at::empty({batch, max_per_image}, scores.options().dtype(at::kLong));
  auto num_detections = at::empty({batch}, scores.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "multiclass_nms_cpu", [&] {
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    const scalar_t* s = scores.const_data_ptr<scalar_t>();
    const int64_t boxes_per_image = num_boxes * (boxes_per_class ? num_classes : 1) * 4;
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        num_detections.mutable_data_ptr<int64_t>()[i] = multiclass_nms_image<scalar_t>(
            b + i * boxes_per_image, s + i * num_boxes * num_classes, num_boxes, num_classes, boxes_per_class,
            opt, out_boxes.mutable_data_ptr<scalar_t>() + i * max_per_image * 4,
            out_scores.mutable_data_ptr<scalar_t>() + i * max_per_image,
            out_labels.mutable_data_ptr<int64_t>() + i * max_per_image);
      }
    });
  });
  return {out_boxes.to(boxes_in.scalar_type()), out_scores.to(scores_in.scalar_type()), out_labels,
          num_detections};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("multiclass_nms", &multiclass_nms_cpu);
}

}  // namespace pydet
