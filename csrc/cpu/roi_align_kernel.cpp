// CPU RoIAlign (torchvision semantics), single- and multi-level, forward and backward.
//
// Bilinear weights are separable, so each RoI is described once by two small tables: for every output
// row, the feature rows its samples read with their summed weights, and likewise for columns (the
// precomputation torchvision does per sample, one axis at a time). Tap (r, c) of a bin weighs
// w_r * w_c, and the tables serve every channel.
//
// Channels are processed in blocks of 128 bytes laid out pixel-major ([N, H, W, block], the layout of a
// channels-last map), so a tap is a short contiguous vector operation that the compiler vectorises; the
// innermost loops are also compiled for AVX2 and picked at run time. A block of an NCHW map is small
// enough to stay in the last-level cache while the RoIs read it; channels-last maps are read in place.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../roi_align.h"

namespace pydet {
namespace {

using roi_align::AxisTaps;
using roi_align::RoiGrid;

struct LevelShape {
  int64_t height, width;
  double scale;
};

// The taps of bin p of RoI k along one axis are entries [begin[k * pooled + p], end[k * pooled + p]).
template <typename acc_t>
struct AxisTable {
  std::vector<int64_t> begin, end;
  std::vector<int32_t> index;
  std::vector<acc_t> weight;
};

template <typename acc_t>
struct RoiTables {
  std::vector<int64_t> image, level;  // level -1: the RoI pools nothing (its level is out of range)
  std::vector<int64_t> row_first, row_last, col_first, col_last;  // pixels it reads (first > last: none)
  std::vector<acc_t> count;
  AxisTable<acc_t> rows, cols;
  // RoIs grouped by (level, image), in RoI order inside a group; RoIs that pool nothing come last.
  std::vector<int64_t> order, group_begin;
};

// rois: [K, 5] contiguous in acc_t. levels: [K] or null (every RoI on level 0).
template <typename acc_t>
RoiTables<acc_t> build_tables(const at::Tensor& rois, const int64_t* levels, const std::vector<LevelShape>& shapes,
                              int64_t batch_size, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                              bool aligned) {
  const int64_t num_rois = rois.size(0);
  const int64_t num_levels = static_cast<int64_t>(shapes.size());
  const acc_t* r = rois.const_data_ptr<acc_t>();
  RoiTables<acc_t> t;
  t.image.resize(num_rois);
  t.level.resize(num_rois);
  t.count.resize(num_rois);
  t.row_first.resize(num_rois);
  t.row_last.resize(num_rois);
  t.col_first.resize(num_rois);
  t.col_last.resize(num_rois);
  std::vector<RoiGrid<acc_t>> grids(num_rois);
  t.rows.begin.resize(num_rois * pooled_h);
  t.rows.end.resize(num_rois * pooled_h);
  t.cols.begin.resize(num_rois * pooled_w);
  t.cols.end.resize(num_rois * pooled_w);
  // Serial pass: validate, size each RoI's share of the tables. A bin merges its taps into distinct
  // indices, so it needs at most min(2 * samples, size) entries.
  int64_t row_entries = 0, col_entries = 0;
  std::vector<int64_t> row_stride(num_rois), col_stride(num_rois), row_base(num_rois), col_base(num_rois);
  for (int64_t k = 0; k < num_rois; ++k) {
    const acc_t* roi = r + 5 * k;
    const acc_t b = roi[0];
    TORCH_CHECK_VALUE(b >= acc_t(0) && b < static_cast<acc_t>(batch_size) && b == std::floor(b), "rois[", k,
                      ", 0] must be an integer batch index in [0, ", batch_size, "), got ", b);
    t.image[k] = static_cast<int64_t>(b);
    const int64_t level = levels ? levels[k] : 0;
    t.level[k] = (level >= 0 && level < num_levels) ? level : -1;
    if (t.level[k] < 0) {
      grids[k].samples_y = grids[k].samples_x = 0;
      grids[k].count = acc_t(1);
    } else {
      grids[k] = roi_align::make_roi_grid<acc_t>(roi + 1, static_cast<acc_t>(shapes[level].scale), pooled_h,
                                                 pooled_w, sampling_ratio, aligned);
    }
    t.count[k] = grids[k].count;
    const int64_t h = t.level[k] < 0 ? 0 : shapes[level].height, w = t.level[k] < 0 ? 0 : shapes[level].width;
    row_stride[k] = std::min(2 * grids[k].samples_y, h);
    col_stride[k] = std::min(2 * grids[k].samples_x, w);
    row_base[k] = row_entries;
    col_base[k] = col_entries;
    row_entries += row_stride[k] * pooled_h;
    col_entries += col_stride[k] * pooled_w;
  }
  t.rows.index.resize(row_entries);
  t.rows.weight.resize(row_entries);
  t.cols.index.resize(col_entries);
  t.cols.weight.resize(col_entries);
  at::parallel_for(0, num_rois, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const auto& g = grids[k];
      const int64_t h = t.level[k] < 0 ? 0 : shapes[t.level[k]].height;
      const int64_t w = t.level[k] < 0 ? 0 : shapes[t.level[k]].width;
      int64_t first = h, last = -1;
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        const int64_t at = row_base[k] + ph * row_stride[k];
        const int64_t end = roi_align::fill_bin(g.start_y, g.bin_h, ph, g.samples_y, h, at, t.rows.index.data(),
                                     t.rows.weight.data());
        t.rows.begin[k * pooled_h + ph] = at;
        t.rows.end[k * pooled_h + ph] = end;
        for (int64_t i = at; i < end; ++i) {
          first = std::min<int64_t>(first, t.rows.index[i]);
          last = std::max<int64_t>(last, t.rows.index[i]);
        }
      }
      t.row_first[k] = first;
      t.row_last[k] = last;
      first = w;
      last = -1;
      for (int64_t pw = 0; pw < pooled_w; ++pw) {
        const int64_t at = col_base[k] + pw * col_stride[k];
        const int64_t end = roi_align::fill_bin(g.start_x, g.bin_w, pw, g.samples_x, w, at, t.cols.index.data(),
                                     t.cols.weight.data());
        t.cols.begin[k * pooled_w + pw] = at;
        t.cols.end[k * pooled_w + pw] = end;
        for (int64_t i = at; i < end; ++i) {
          first = std::min<int64_t>(first, t.cols.index[i]);
          last = std::max<int64_t>(last, t.cols.index[i]);
        }
      }
      t.col_first[k] = first;
      t.col_last[k] = last;
    }
  });
  // Stable counting sort of the RoIs by group (level * batch_size + image).
  const int64_t num_groups = num_levels * batch_size;
  t.group_begin.assign(num_groups + 2, 0);
  auto group_of = [&](int64_t k) { return t.level[k] < 0 ? num_groups : t.level[k] * batch_size + t.image[k]; };
  for (int64_t k = 0; k < num_rois; ++k) ++t.group_begin[group_of(k) + 1];
  for (int64_t g = 0; g <= num_groups; ++g) t.group_begin[g + 1] += t.group_begin[g];
  std::vector<int64_t> fill(t.group_begin.begin(), t.group_begin.end() - 1);
  t.order.resize(num_rois);
  for (int64_t k = 0; k < num_rois; ++k) t.order[fill[group_of(k)]++] = k;
  return t;
}

// Items per parallel chunk, given a rough count of the multiply-adds of one item: small problems (and
// the many tiny calls of gradcheck) stay on one thread.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(work_per_item, 1));
}

// Channels per block: 32 floats or 16 doubles, a few vector registers.
constexpr int64_t kBlockBytes = 128;
template <typename acc_t>
constexpr int64_t kBlock = kBlockBytes / static_cast<int64_t>(sizeof(acc_t));

#if defined(__GNUC__) && defined(__x86_64__)
#define PYDET_AVX2_VARIANT 1
#endif

bool cpu_has_avx2() {
#ifdef PYDET_AVX2_VARIANT
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// Defines name##_baseline and, on x86-64, name##_avx2, both calling body<kWidth>(job, k, c0, width) for
// RoI k and channels [c0, c0 + width): kWidth is the full block (a compile-time width the compiler keeps
// in registers) or 0 for a shorter last block. The body is force-inlined, so each variant is compiled for
// its own instruction set.
#ifdef PYDET_AVX2_VARIANT
#define PYDET_DEFINE_VARIANTS(name, body, Job)                                                          \
  template <typename... Ts>                                                                           \
  void name##_baseline(const Job<Ts...>& job, int64_t k, int64_t c0, int64_t width) {                 \
    constexpr int64_t full = kBlock<typename Job<Ts...>::acc_t>;                                      \
    width == full ? body<full>(job, k, c0, width) : body<0>(job, k, c0, width);                       \
  }                                                                                                   \
  template <typename... Ts>                                                                           \
  __attribute__((target("avx2,fma"))) void name##_avx2(const Job<Ts...>& job, int64_t k, int64_t c0, \
                                                       int64_t width) {                               \
    constexpr int64_t full = kBlock<typename Job<Ts...>::acc_t>;                                      \
    width == full ? body<full>(job, k, c0, width) : body<0>(job, k, c0, width);                       \
  }
#define PYDET_PICK_VARIANT(name, ...) (cpu_has_avx2() ? &name##_avx2<__VA_ARGS__> : &name##_baseline<__VA_ARGS__>)
#else
#define PYDET_DEFINE_VARIANTS(name, body, Job)                                                          \
  template <typename... Ts>                                                                           \
  void name##_baseline(const Job<Ts...>& job, int64_t k, int64_t c0, int64_t width) {                 \
    constexpr int64_t full = kBlock<typename Job<Ts...>::acc_t>;                                      \
    width == full ? body<full>(job, k, c0, width) : body<0>(job, k, c0, width);                       \
  }
#define PYDET_PICK_VARIANT(name, ...) (&name##_baseline<__VA_ARGS__>)
#endif

// ---- forward ----

template <typename data_t, typename scalar_t>
struct PoolJob {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiTables<acc_t>& tables;
  const std::vector<LevelShape>& shapes;
  // Per level: pixel-major data with pixels pixel_stride elements apart, holding every image (a
  // channels-last input) or only the image being pooled (a gathered channel block).
  std::vector<const data_t*> maps;
  bool every_image;
  int64_t pixel_stride;
  int64_t first_channel;  // the channel stored first in each pixel of `maps`
  int64_t channels, pooled_h, pooled_w;
  scalar_t* out;  // [K, C, pooled_h, pooled_w]
};

// out[k, c0 + c] for c < width.
template <int64_t kWidth, typename data_t, typename scalar_t>
C10_ALWAYS_INLINE void pool_roi(const PoolJob<data_t, scalar_t>& job, int64_t k, int64_t c0, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto& t = job.tables;
  const int64_t n = kWidth > 0 ? kWidth : width;
  const int64_t level = t.level[k], bins = job.pooled_h * job.pooled_w;
  const int64_t map_width = job.shapes[level].width, stride = job.pixel_stride;
  const int64_t image_size = job.shapes[level].height * map_width * stride;
  const data_t* image = job.maps[level] + (job.every_image ? t.image[k] * image_size : 0) + (c0 - job.first_channel);
  scalar_t* o = job.out + (k * job.channels + c0) * bins;
  // A full block accumulates in registers; a channels-last map is pooled in one pass over all channels,
  // which reads each pixel's channels once, from a buffer in L1.
  acc_t block_acc[kBlock<acc_t>];
  std::vector<acc_t> wide_acc(kWidth == 0 && n > kBlock<acc_t> ? n : 0);
  acc_t* acc = wide_acc.empty() ? block_acc : wide_acc.data();
  for (int64_t ph = 0; ph < job.pooled_h; ++ph) {
    const int64_t rb = t.rows.begin[k * job.pooled_h + ph], re = t.rows.end[k * job.pooled_h + ph];
    for (int64_t pw = 0; pw < job.pooled_w; ++pw) {
      const int64_t cb = t.cols.begin[k * job.pooled_w + pw], ce = t.cols.end[k * job.pooled_w + pw];
      for (int64_t c = 0; c < n; ++c) acc[c] = acc_t(0);
      for (int64_t ri = rb; ri < re; ++ri) {
        const data_t* row = image + static_cast<int64_t>(t.rows.index[ri]) * map_width * stride;
        for (int64_t ci = cb; ci < ce; ++ci) {
          const acc_t w = t.rows.weight[ri] * t.cols.weight[ci];
          const data_t* px = row + static_cast<int64_t>(t.cols.index[ci]) * stride;
          for (int64_t c = 0; c < n; ++c) acc[c] += w * static_cast<acc_t>(px[c]);
        }
      }
      const acc_t count = t.count[k];
      for (int64_t c = 0; c < n; ++c) o[c * bins + ph * job.pooled_w + pw] = static_cast<scalar_t>(acc[c] / count);
    }
  }
}

PYDET_DEFINE_VARIANTS(pool_roi_block, pool_roi, PoolJob)

// Pixels are gathered in tiles of one row by kTile columns, and only the tiles some RoI reads: with FPN
// levels, the RoIs of the finest (largest) map often cover a small part of it.
constexpr int64_t kTile = 16;

// For each map: tiles_read[(n * height + y) * tiles_x + x / kTile].
template <typename acc_t>
std::vector<std::vector<uint8_t>> tiles_read_by_rois(const RoiTables<acc_t>& t, const std::vector<LevelShape>& shapes,
                                                     int64_t batch_size) {
  std::vector<std::vector<uint8_t>> read;
  for (const auto& s : shapes) read.emplace_back(batch_size * s.height * ((s.width + kTile - 1) / kTile), 0);
  for (size_t k = 0; k < t.level.size(); ++k) {
    if (t.level[k] < 0) continue;
    const auto& s = shapes[t.level[k]];
    const int64_t tiles_x = (s.width + kTile - 1) / kTile;
    for (int64_t y = t.row_first[k]; y <= t.row_last[k]; ++y) {
      uint8_t* row = read[t.level[k]].data() + (t.image[k] * s.height + y) * tiles_x;
      for (int64_t x = t.col_first[k] / kTile; x <= t.col_last[k] / kTile; ++x) row[x] = 1;
    }
  }
  return read;
}

// dst[y, x, c] = image[c0 + c, y, x] for c < block, in the tiles RoIs read (tiles_read of this image).
template <typename scalar_t, typename acc_t>
void gather_channel_block(const scalar_t* image, const uint8_t* tiles_read, int64_t height, int64_t width,
                          int64_t c0, int64_t block, acc_t* dst) {
  const int64_t tiles_x = (width + kTile - 1) / kTile;
  for (int64_t y = 0; y < height; ++y) {
    const scalar_t* s = image + (c0 * height + y) * width;
    acc_t* d = dst + y * width * block;
    for (int64_t x0 = 0; x0 < width; x0 += kTile) {
      if (!tiles_read[y * tiles_x + x0 / kTile]) continue;
      const int64_t x1 = std::min(x0 + kTile, width);
      for (int64_t c = 0; c < block; ++c) {
        const scalar_t* sc = s + c * height * width;
        for (int64_t x = x0; x < x1; ++x) d[x * block + c] = static_cast<acc_t>(sc[x]);
      }
    }
  }
}

template <typename scalar_t>
void forward_impl(const std::vector<at::Tensor>& features, const RoiTables<at::opmath_type<scalar_t>>& t,
                  const std::vector<LevelShape>& shapes, int64_t batch_size, int64_t channels, int64_t pooled_h,
                  int64_t pooled_w, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t bins = pooled_h * pooled_w, num_rois = static_cast<int64_t>(t.order.size());
  const int64_t pooled_rois = t.group_begin[shapes.size() * batch_size];
  for (int64_t slot = pooled_rois; slot < num_rois; ++slot) {  // RoIs on no map
    std::fill(out + t.order[slot] * channels * bins, out + (t.order[slot] + 1) * channels * bins, scalar_t(0));
  }
  const bool channels_last = std::all_of(features.begin(), features.end(), [](const at::Tensor& f) {
    return f.is_contiguous(at::MemoryFormat::ChannelsLast);
  });
  if (channels_last) {
    PoolJob<scalar_t, scalar_t> job{t, shapes, {}, true, channels, 0, channels, pooled_h, pooled_w, out};
    for (const auto& f : features) job.maps.push_back(f.const_data_ptr<scalar_t>());
    const auto pool = PYDET_PICK_VARIANT(pool_roi_block, scalar_t, scalar_t);
    at::parallel_for(0, pooled_rois, grain_for(bins * channels * 16), [&](int64_t begin, int64_t end) {
      for (int64_t slot = begin; slot < end; ++slot) pool(job, t.order[slot], 0, channels);
    });
    return;
  }
  // One parallel region over (channel block, image) items: an item gathers its block of the image's maps
  // into a pixel-major buffer that stays in cache, then pools the image's RoIs from it.
  const int64_t block = std::min(kBlock<acc_t>, channels);
  const int64_t num_blocks = (channels + block - 1) / block;
  const auto tiles_read = tiles_read_by_rois(t, shapes, batch_size);
  std::vector<at::Tensor> contiguous;
  std::vector<int64_t> buffer_offset{0};
  for (size_t l = 0; l < features.size(); ++l) {
    contiguous.push_back(features[l].contiguous());
    buffer_offset.push_back(buffer_offset.back() + shapes[l].height * shapes[l].width * block);
  }
  const auto pool = PYDET_PICK_VARIANT(pool_roi_block, acc_t, scalar_t);
  const int64_t work_per_item = buffer_offset.back() + num_rois / std::max<int64_t>(batch_size, 1) * bins * block;
  at::parallel_for(0, num_blocks * batch_size, grain_for(work_per_item), [&](int64_t begin, int64_t end) {
    std::unique_ptr<acc_t[]> buffer(new acc_t[buffer_offset.back()]);
    PoolJob<acc_t, scalar_t> job{t, shapes, {}, false, block, 0, channels, pooled_h, pooled_w, out};
    for (size_t l = 0; l < features.size(); ++l) job.maps.push_back(buffer.get() + buffer_offset[l]);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item % batch_size, c0 = (item / batch_size) * block;
      const int64_t width = std::min(block, channels - c0);
      job.pixel_stride = width;
      job.first_channel = c0;
      for (size_t l = 0; l < features.size(); ++l) {
        const int64_t height = shapes[l].height, map_width = shapes[l].width;
        const int64_t tiles_x = (map_width + kTile - 1) / kTile;
        gather_channel_block(contiguous[l].const_data_ptr<scalar_t>() + n * channels * height * map_width,
                             tiles_read[l].data() + n * height * tiles_x, height, map_width, c0, width,
                             buffer.get() + buffer_offset[l]);
      }
      for (size_t l = 0; l < features.size(); ++l) {
        const int64_t group = static_cast<int64_t>(l) * batch_size + n;
        for (int64_t slot = t.group_begin[group]; slot < t.group_begin[group + 1]; ++slot) {
          pool(job, t.order[slot], c0, width);
        }
      }
    }
  });
}

// ---- backward ----
//
// The gradient is built in horizontal bands of kBandRows rows of one (level, image) map, one channel
// block at a time: a band collects the contributions of the RoIs that touch it in a small pixel-major
// buffer that stays in cache, then writes its rows of the NCHW gradient. Each (band, block) item writes
// its own part of the gradient and adds contributions in a fixed order (RoI, bin, row tap, column tap),
// so the gradient is race-free and bit-identical whatever the number of threads.
constexpr int64_t kBandRows = 8;

struct Band {
  int64_t level, image, y0, y1;
};

template <typename scalar_t>
struct ScatterJob {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiTables<acc_t>& tables;
  const std::vector<LevelShape>& shapes;
  const scalar_t* grad;  // [K, C, pooled_h, pooled_w]
  int64_t channels, pooled_h, pooled_w;
  const Band* band;
  acc_t* buffer;  // [y1 - y0, width, block] for the band
};

// Adds the contributions of RoI k to the band's rows, channels [c0, c0 + width).
template <int64_t kWidth, typename scalar_t>
C10_ALWAYS_INLINE void scatter_roi(const ScatterJob<scalar_t>& job, int64_t k, int64_t c0, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto& t = job.tables;
  const Band& band = *job.band;
  const int64_t n = kWidth > 0 ? kWidth : width;
  const int64_t bins = job.pooled_h * job.pooled_w, map_width = job.shapes[band.level].width;
  const scalar_t* gk = job.grad + (k * job.channels + c0) * bins;
  const acc_t count = t.count[k];
  acc_t gv[kBlock<acc_t>];
  for (int64_t ph = 0; ph < job.pooled_h; ++ph) {
    const int64_t rb = t.rows.begin[k * job.pooled_h + ph], re = t.rows.end[k * job.pooled_h + ph];
    bool touches_band = false;
    for (int64_t ri = rb; ri < re; ++ri) touches_band |= t.rows.index[ri] >= band.y0 && t.rows.index[ri] < band.y1;
    if (!touches_band) continue;
    for (int64_t pw = 0; pw < job.pooled_w; ++pw) {
      const int64_t cb = t.cols.begin[k * job.pooled_w + pw], ce = t.cols.end[k * job.pooled_w + pw];
      for (int64_t c = 0; c < n; ++c) gv[c] = static_cast<acc_t>(gk[c * bins + ph * job.pooled_w + pw]) / count;
      for (int64_t ri = rb; ri < re; ++ri) {
        const int64_t y = t.rows.index[ri];
        if (y < band.y0 || y >= band.y1) continue;
        acc_t* row = job.buffer + (y - band.y0) * map_width * n;
        for (int64_t ci = cb; ci < ce; ++ci) {
          const acc_t w = t.rows.weight[ri] * t.cols.weight[ci];
          acc_t* px = row + static_cast<int64_t>(t.cols.index[ci]) * n;
          for (int64_t c = 0; c < n; ++c) px[c] += w * gv[c];
        }
      }
    }
  }
}

PYDET_DEFINE_VARIANTS(scatter_roi_block, scatter_roi, ScatterJob)

template <typename scalar_t>
void backward_impl(const at::Tensor& grad, const RoiTables<at::opmath_type<scalar_t>>& t,
                   const std::vector<LevelShape>& shapes, int64_t batch_size, int64_t channels, int64_t pooled_h,
                   int64_t pooled_w, std::vector<at::Tensor>& grads) {
  using acc_t = at::opmath_type<scalar_t>;
  if (channels == 0) return;
  const int64_t block = std::min(kBlock<acc_t>, channels);
  std::vector<Band> bands;
  int64_t widest = 0;
  for (int64_t l = 0; l < static_cast<int64_t>(shapes.size()); ++l) {
    widest = std::max(widest, shapes[l].width);
    for (int64_t n = 0; n < batch_size; ++n) {
      for (int64_t y0 = 0; y0 < shapes[l].height; y0 += kBandRows) {
        bands.push_back({l, n, y0, std::min(y0 + kBandRows, shapes[l].height)});
      }
    }
  }
  const auto scatter = PYDET_PICK_VARIANT(scatter_roi_block, scalar_t);
  const int64_t num_bands = static_cast<int64_t>(bands.size()), num_blocks = (channels + block - 1) / block;
  at::parallel_for(0, num_blocks * num_bands, grain_for(kBandRows * widest * block * 4), [&](int64_t begin,
                                                                                              int64_t end) {
    std::vector<acc_t> buffer(kBandRows * widest * block);
    ScatterJob<scalar_t> job{t, shapes, grad.const_data_ptr<scalar_t>(), channels, pooled_h, pooled_w, nullptr,
                             buffer.data()};
    for (int64_t item = begin; item < end; ++item) {
      const Band& band = bands[item % num_bands];
      const int64_t c0 = (item / num_bands) * block, width = std::min(block, channels - c0);
      job.band = &band;
      const int64_t map_width = shapes[band.level].width, height = shapes[band.level].height;
      std::fill(buffer.begin(), buffer.begin() + (band.y1 - band.y0) * map_width * width, acc_t(0));
      const int64_t group = band.level * batch_size + band.image;
      for (int64_t slot = t.group_begin[group]; slot < t.group_begin[group + 1]; ++slot) {
        const int64_t k = t.order[slot];
        if (t.row_last[k] >= band.y0 && t.row_first[k] < band.y1) scatter(job, k, c0, width);
      }
      scalar_t* dst =
          grads[band.level].mutable_data_ptr<scalar_t>() + (band.image * channels + c0) * height * map_width;
      for (int64_t c = 0; c < width; ++c) {
        for (int64_t y = band.y0; y < band.y1; ++y) {
          const acc_t* src = buffer.data() + (y - band.y0) * map_width * width + c;
          scalar_t* d = dst + (c * height + y) * map_width;
          for (int64_t x = 0; x < map_width; ++x) d[x] = static_cast<scalar_t>(src[x * width]);
        }
      }
    }
  });
}

std::vector<LevelShape> level_shapes(at::TensorList features, c10::ArrayRef<double> scales) {
  std::vector<LevelShape> shapes;
  for (size_t l = 0; l < features.size(); ++l) shapes.push_back({features[l].size(2), features[l].size(3), scales[l]});
  return shapes;
}

at::Tensor multi_scale_forward_cpu(at::TensorList features_in, const at::Tensor& rois_in, const int64_t* levels,
                                   c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                   int64_t sampling_ratio, bool aligned) {
  const auto& first = features_in[0];
  const int64_t batch_size = first.size(0), channels = first.size(1), num_rois = rois_in.size(0);
  auto output = at::empty({num_rois, channels, pooled_h, pooled_w}, first.options());
  const auto shapes = level_shapes(features_in, scales);
  const std::vector<at::Tensor> features(features_in.begin(), features_in.end());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "roi_align_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto rois = rois_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto tables =
        build_tables<acc_t>(rois, levels, shapes, batch_size, pooled_h, pooled_w, sampling_ratio, aligned);
    if (output.numel() > 0) {
      forward_impl<scalar_t>(features, tables, shapes, batch_size, channels, pooled_h, pooled_w, output);
    }
  });
  return output;
}

std::vector<at::Tensor> multi_scale_backward_cpu(const at::Tensor& grad_in, const at::Tensor& rois_in,
                                                 const int64_t* levels, c10::ArrayRef<double> scales,
                                                 int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                                 int64_t channels, c10::ArrayRef<int64_t> heights,
                                                 c10::ArrayRef<int64_t> widths, int64_t sampling_ratio,
                                                 bool aligned) {
  std::vector<LevelShape> shapes;
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    shapes.push_back({heights[l], widths[l], scales[l]});
    grads.push_back(at::empty({batch_size, channels, heights[l], widths[l]}, grad_in.options()));
  }
  const auto grad = grad_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto rois = rois_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto tables =
        build_tables<acc_t>(rois, levels, shapes, batch_size, pooled_h, pooled_w, sampling_ratio, aligned);
    backward_impl<scalar_t>(grad, tables, shapes, batch_size, channels, pooled_h, pooled_w, grads);
  });
  return grads;
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                         int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  roi_align::check_forward_args({input}, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, sampling_ratio);
  return multi_scale_forward_cpu({input}, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, sampling_ratio,
                                 aligned);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  roi_align::check_backward_args(grad, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, batch_size, channels,
                                 {height}, {width});
  return multi_scale_backward_cpu(grad, rois, nullptr, {spatial_scale}, pooled_h, pooled_w, batch_size, channels,
                                  {height}, {width}, sampling_ratio, aligned)[0];
}

at::Tensor multi_scale_roi_align_cpu(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels_in,
                                     c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                     int64_t sampling_ratio, bool aligned) {
  roi_align::check_forward_args(features, rois, &levels_in, scales, pooled_h, pooled_w, sampling_ratio);
  const auto levels = levels_in.contiguous();
  return multi_scale_forward_cpu(features, rois, levels.const_data_ptr<int64_t>(), scales, pooled_h, pooled_w,
                                 sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_scale_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                                           const at::Tensor& levels_in, c10::ArrayRef<double> scales,
                                                           int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                                           int64_t channels, c10::ArrayRef<int64_t> heights,
                                                           c10::ArrayRef<int64_t> widths, int64_t sampling_ratio,
                                                           bool aligned) {
  roi_align::check_backward_args(grad, rois, &levels_in, scales, pooled_h, pooled_w, batch_size, channels, heights,
                                 widths);
  const auto levels = levels_in.contiguous();
  return multi_scale_backward_cpu(grad, rois, levels.const_data_ptr<int64_t>(), scales, pooled_h, pooled_w,
                                  batch_size, channels, heights, widths, sampling_ratio, aligned);
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_cpu);
  m.impl("multi_scale_roi_align_backward", &multi_scale_roi_align_backward_cpu);
}

}  // namespace pydet
