// Mask pasting straight to COCO run-length encoding (see ../paste_masks.h for the pasting semantics).
//
// COCO RLE walks the H x W binary mask in column-major order (pixel (y, x) at x * H + y) and stores
// alternating run lengths of 0s and 1s, the first counting 0s (so it is 0 when the mask starts with
// a 1) and the last always written. The compressed string stores each count (minus the count two
// before it, from the fourth on) as little-endian base-32 digits with sign extension: 5 value bits
// per character, bit 0x20 set while more characters follow, offset by 48 to stay printable.
//
// Only the pixels of each box's paste range are sampled: the zeros above, below and between its
// columns are added to the current run arithmetically, so work and memory are O(box area) per mask.
// The samples are paste_masks' (same paste_axis/paste_taps/paste_sample/paste_output calls), so the
// decoded RLE is bit for bit paste_masks' bool mask.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "../paste_masks.h"

namespace pydet {
namespace {

// Appends the compressed form of a sequence of run lengths to a string, one count at a time.
class RleStringWriter {
 public:
  explicit RleStringWriter(std::string& out) : out_(out) {}

  void write(int64_t count) {
    // Counts after the third are stored relative to the count of the same value before them,
    // which is small for masks whose outline changes slowly from column to column.
    int64_t x = written_ > 2 ? count - before_previous_ : count;
    before_previous_ = previous_;
    previous_ = count;
    ++written_;
    bool more = true;
    while (more) {
      char digit = static_cast<char>(x & 0x1f);
      x >>= 5;  // arithmetic shift: a negative delta ends once only its sign bits are left
      more = (digit & 0x10) ? x != -1 : x != 0;
      if (more) digit |= 0x20;
      out_.push_back(static_cast<char>(digit + 48));
    }
  }

 private:
  std::string& out_;
  int64_t written_ = 0, previous_ = 0, before_previous_ = 0;
};

// Merges a stream of (value, length) pieces into maximal runs, starting with a run of 0s.
class RunBuilder {
 public:
  explicit RunBuilder(RleStringWriter& writer) : writer_(writer) {}

  void add(bool value, int64_t length) {
    if (length > 0) {
      switch_to(value);
      length_ += length;
    }
  }

  // The per-pixel path: a new run starts only where the value changes.
  void add_pixel(bool value) {
    switch_to(value);
    ++length_;
  }

  void finish() { writer_.write(length_); }

 private:
  void switch_to(bool value) {
    if (value != value_) {
      writer_.write(length_);
      value_ = value;
      length_ = 0;
    }
  }

  RleStringWriter& writer_;
  bool value_ = false;
  int64_t length_ = 0;
};

// The compressed RLE of mask i pasted into its box, appended to `out`.
template <typename scalar_t>
void paste_mask_rle(const scalar_t* mask, int64_t mask_h, int64_t mask_w, const double* box, int64_t height,
                    int64_t width, at::opmath_type<scalar_t> threshold, std::string& out) {
  using acc_t = at::opmath_type<scalar_t>;
  RleStringWriter writer(out);
  RunBuilder runs(writer);
  const PasteAxis ax = paste_axis(box[0], box[2], mask_w, width);
  const PasteAxis ay = paste_axis(box[1], box[3], mask_h, height);
  int64_t position = 0;  // column-major index of the first pixel not yet added to a run
  if (ax.first < ax.last && ay.first < ay.last) {
    std::vector<PasteTaps<acc_t>> row_taps(ay.last - ay.first);
    for (int64_t y = ay.first; y < ay.last; ++y) row_taps[y - ay.first] = paste_taps<acc_t>(ay, y, mask_h);
    for (int64_t x = ax.first; x < ax.last; ++x) {
      const PasteTaps<acc_t> tx = paste_taps<acc_t>(ax, x, mask_w);
      const int64_t column = x * height;
      runs.add(false, column + ay.first - position);
      for (int64_t y = ay.first; y < ay.last; ++y) {
        const PasteTaps<acc_t>& ty = row_taps[y - ay.first];
        const acc_t value = paste_sample<acc_t>(mask + ty.low * mask_w, mask + ty.high * mask_w, ty, tx);
        runs.add_pixel(paste_output<bool>(value, threshold));
      }
      position = column + ay.last;
    }
  }
  runs.add(false, height * width - position);
  runs.finish();
}

// Returns (chars, offsets): mask i's compressed counts are chars[offsets[i]:offsets[i + 1]] (uint8).
std::tuple<at::Tensor, at::Tensor> paste_masks_rle_cpu(const at::Tensor& masks_in, const at::Tensor& boxes_in,
                                                       int64_t height, int64_t width, double threshold) {
  check_paste_masks_args(masks_in, boxes_in, height, width, threshold);
  // CUDA inputs are small (N x h x w masks, N x 4 boxes): they are encoded on the host.
  const auto masks = masks_in.to(at::kCPU).contiguous();
  const auto boxes = boxes_in.to(at::kCPU, at::kDouble).contiguous();
  const int64_t n = masks.size(0);
  std::vector<std::string> encoded(n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, masks.scalar_type(), "paste_masks_rle_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t mask_h = masks.size(1), mask_w = masks.size(2);
    const scalar_t* mask_data = masks.const_data_ptr<scalar_t>();
    const double* box_data = boxes.const_data_ptr<double>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        paste_mask_rle<scalar_t>(mask_data + i * mask_h * mask_w, mask_h, mask_w, box_data + 4 * i, height, width,
                                 static_cast<acc_t>(threshold), encoded[i]);
      }
    });
  });
  auto offsets = at::empty({n + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* offset = offsets.mutable_data_ptr<int64_t>();
  offset[0] = 0;
  for (int64_t i = 0; i < n; ++i) offset[i + 1] = offset[i] + static_cast<int64_t>(encoded[i].size());
  auto chars = at::empty({offset[n]}, at::TensorOptions().dtype(at::kByte));
  uint8_t* char_data = chars.mutable_data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) std::memcpy(char_data + offset[i], encoded[i].data(), encoded[i].size());
  return {chars, offsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, CPU, m) { m.impl("paste_masks_rle", &paste_masks_rle_cpu); }
// The encoding is host work whatever the device; the kernel copies the (small) inputs over. The
// outputs are CPU tensors: they only feed the Python strings.
TORCH_LIBRARY_IMPL(pydet, CUDA, m) { m.impl("paste_masks_rle", &paste_masks_rle_cpu); }

}  // namespace pydet
