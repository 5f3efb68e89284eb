// CPU mask pasting (detectron2 _do_paste_mask semantics, see ../paste_masks.h). Every output row is
// written exactly once: zeros outside the box's pixel range, samples inside. No sampling grid is
// materialised; the only scratch is one row of column taps per thread.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../paste_masks.h"

namespace pydet {
namespace {

// A large output is usually fresh memory that this kernel touches first, and with 4 KiB pages the
// page faults cost more than the pasting (100 x 800 x 1216 bools: ~24k faults, ~50 ms of a ~60 ms
// run). Transparent huge pages on the buffer's 2 MiB-aligned interior cut the faults 512-fold; this is
// what torch's THP_MEM_ALLOC_ENABLE=1 does for every allocation. It is only a hint: errors are ignored.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (bytes < 4 * kHugePage) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

template <typename scalar_t, typename out_t>
void paste_masks_rows(const at::Tensor& masks, const at::Tensor& boxes, at::Tensor& out,
                      at::opmath_type<scalar_t> threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = out.size(0), height = out.size(1), width = out.size(2);
  const int64_t mask_h = masks.size(1), mask_w = masks.size(2);
  const scalar_t* mask_data = masks.const_data_ptr<scalar_t>();
  const double* box = boxes.const_data_ptr<double>();
  out_t* out_data = out.mutable_data_ptr<out_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(width, 1));
  at::parallel_for(0, n * height, grain, [&](int64_t begin, int64_t end) {
    // Column taps depend only on the mask, so they are built once per mask a thread meets.
    std::vector<PasteTaps<acc_t>> column_taps;
    int64_t taps_of_mask = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row / height, y = row % height;
      const double* b = box + 4 * i;
      out_t* out_row = out_data + row * width;
      const PasteAxis ax = paste_axis(b[0], b[2], mask_w, width);
      const PasteAxis ay = paste_axis(b[1], b[3], mask_h, height);
      if (y < ay.first || y >= ay.last || ax.first == ax.last) {
        std::fill(out_row, out_row + width, out_t(0));
        continue;
      }
      if (taps_of_mask != i) {
        column_taps.resize(ax.last - ax.first);
        for (int64_t x = ax.first; x < ax.last; ++x) column_taps[x - ax.first] = paste_taps<acc_t>(ax, x, mask_w);
        taps_of_mask = i;
      }
      const PasteTaps<acc_t> ty = paste_taps<acc_t>(ay, y, mask_h);
      const scalar_t* mask = mask_data + i * mask_h * mask_w;
      const scalar_t* low_row = mask + ty.low * mask_w;
      const scalar_t* high_row = mask + ty.high * mask_w;
      std::fill(out_row, out_row + ax.first, out_t(0));
      for (int64_t x = ax.first; x < ax.last; ++x) {
        const acc_t value = paste_sample<acc_t>(low_row, high_row, ty, column_taps[x - ax.first]);
        out_row[x] = paste_output<out_t>(value, threshold);
      }
      std::fill(out_row + ax.last, out_row + width, out_t(0));
    }
  });
}

at::Tensor paste_masks_cpu(const at::Tensor& masks_in, const at::Tensor& boxes_in, int64_t height, int64_t width,
                           std::optional<double> threshold) {
  check_paste_masks_args(masks_in, boxes_in, height, width, threshold);
  const auto masks = masks_in.contiguous();
  // Box arithmetic is done in double whatever the masks' dtype: the boxes are only N x 4.
  const auto boxes = boxes_in.to(at::kDouble).contiguous();
  const int64_t n = masks.size(0);
  auto out = at::empty({n, height, width}, masks.options().dtype(threshold ? at::kBool : masks.scalar_type()));
  if (out.numel() == 0) return out;
  advise_huge_pages(out.mutable_data_ptr(), out.nbytes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (threshold) {
      paste_masks_rows<scalar_t, bool>(masks, boxes, out, static_cast<acc_t>(*threshold));
    } else {
      paste_masks_rows<scalar_t, scalar_t>(masks, boxes, out, acc_t(0));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CPU, m) { m.impl("paste_masks", &paste_masks_cpu); }

}  // namespace pydet
