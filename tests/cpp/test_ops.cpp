// pydet's operators from C++, with no Python involved: the typed entry points of <pydet/ops.h> on small
// inputs whose answers are worked out by hand, and a check that every pydet schema has a CPU kernel.
// Usage: pydet_cpp_test LIBRARY, where LIBRARY is libpydet_ops.so (the CMake library) or the Python
// extension pydet/_C*.so: loading either runs the TORCH_LIBRARY registrations. The extension's only
// Python symbol is its module init function, which is never called here, so lazy binding loads it.
// Only ATen's core and per-operator headers are included (not torch/torch.h): this file is compiled in
// every `make test`.
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <dlfcn.h>
#include <pydet/ops.h>

#include <cmath>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <iostream>
#include <string>
#include <vector>

namespace {

namespace ops = pydet::ops;

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

// Same shape and dtype, values within atol (exactly equal for integer and bool tensors).
void expect_tensor(const at::Tensor& actual, const at::Tensor& expected, const std::string& what,
                   double atol = 1e-5) {
  const bool same_kind = actual.sizes() == expected.sizes() && actual.scalar_type() == expected.scalar_type();
  const bool ok = same_kind && (at::isFloatingType(expected.scalar_type()) ? actual.allclose(expected, 0.0, atol)
                                                                           : actual.equal(expected));
  if (!ok) std::cerr << what << ": got\n" << actual << "\nexpected\n" << expected << "\n";
  expect(ok, what);
}

at::Tensor floats(std::initializer_list<float> values) { return at::tensor(at::ArrayRef<float>(values)); }
at::Tensor longs(std::initializer_list<int64_t> values) { return at::tensor(at::ArrayRef<int64_t>(values)); }

void test_box_iou() {
  const auto boxes1 = floats({0, 0, 10, 10, 5, 5, 15, 15}).view({2, 4});
  const auto boxes2 = floats({0, 0, 10, 10, 20, 20, 30, 30}).view({2, 4});
  // [5, 10]^2 overlap: 25 / (100 + 100 - 25).
  expect_tensor(ops::box_iou(boxes1, boxes2), floats({1, 0, 25.f / 175, 0}).view({2, 2}), "box_iou");
}

void test_encode_decode() {
  const auto proposals = floats({0, 0, 10, 10, 4, 6, 20, 30}).view({2, 4});
  const auto targets = floats({1, 2, 13, 9, 0, 0, 24, 36}).view({2, 4});
  const std::vector<double> weights{10, 10, 5, 5};
  const auto codes = ops::encode_boxes(targets, proposals, weights);
  // Box 0: centre (7, 5.5) and size (12, 7) against (5, 5) and (10, 10), relative to the proposal's size.
  const float dx = 10 * 0.2f, dy = 10 * 0.05f, dw = 5 * std::log(1.2f), dh = 5 * std::log(0.7f);
  expect_tensor(codes[0], floats({dx, dy, dw, dh}), "encode_boxes values");
  const auto decoded = ops::decode_boxes(codes, proposals, weights, std::log(1000.0 / 16));
  expect_tensor(decoded, targets, "decode_boxes(encode_boxes(targets)) == targets", 1e-4);
  expect_tensor(ops::encode_boxes(proposals, proposals, weights), at::zeros({2, 4}), "encode_boxes of itself");
}

void test_grids() {
  // One cell anchor per position on a 2 x 3 grid of stride 4, positions row-major.
  const auto anchors = ops::grid_anchors({floats({-2, -2, 2, 2}).view({1, 4})}, {2, 3}, {4, 4});
  expect(anchors.size() == 1, "grid_anchors: one tensor per level");
  expect_tensor(anchors[0],
                floats({-2, -2, 2, 2, 2, -2, 6, 2, 6, -2, 10, 2, -2, 2, 2, 6, 2, 2, 6, 6, 6, 2, 10, 6}).view({6, 4}),
                "grid_anchors");
  const auto points = ops::grid_points({2, 3}, {8, 8}, {4.0});
  expect(points.size() == 1, "grid_points: one tensor per level");
  expect_tensor(points[0], floats({4, 4, 12, 4, 20, 4, 4, 12, 12, 12, 20, 12}).view({6, 2}), "grid_points");
  expect(ops::grid_points({1, 1}, {8, 8}, {4.0}, at::kDouble)[0].scalar_type() == at::kDouble, "grid_points dtype");
}

void test_nms() {
  // IoU(0, 1) = 81/119, IoU(3, 0) = 100/105, IoU(3, 1) = 85.5/119.5: box 3 (best score) suppresses 0 and 1.
  const auto boxes = floats({0, 0, 10, 10, 1, 1, 11, 11, 20, 20, 30, 30, 0, 0, 10, 10.5f}).view({4, 4});
  const auto scores = floats({0.9f, 0.8f, 0.7f, 0.95f});
  expect_tensor(ops::nms(boxes, scores, 0.5), longs({3, 2}), "nms keeps 3 and 2, by score");
  expect_tensor(ops::nms(boxes, scores, 0.99), longs({3, 0, 1, 2}), "nms with a high threshold keeps all");
  // The same boxes in four classes never suppress each other; in two classes, 3 suppresses 1 only.
  expect_tensor(ops::batched_nms(boxes, scores, longs({0, 1, 2, 3}), 0.5), longs({3, 0, 1, 2}),
                "batched_nms, one class per box");
  expect_tensor(ops::batched_nms(boxes, scores, longs({0, 1, 0, 1}), 0.5), longs({3, 0, 2}),
                "batched_nms, two classes");
}

void test_multiclass_nms() {
  // One image, two boxes shared by two classes; IoU(0, 1) = 81/119.
  const auto boxes = floats({0, 0, 10, 10, 1, 1, 11, 11}).view({1, 2, 4});
  const auto scores = floats({0.9f, 0.1f, 0.8f, 0.6f}).view({1, 2, 2});
  // Class 0: box 1 (0.8) is suppressed by box 0 (0.9); class 1: box 0 (0.1) is under the threshold.
  auto [out_boxes, out_scores, labels, count] = ops::multiclass_nms(boxes, scores, 0.3, 0.5, 4, false, -1);
  expect_tensor(out_boxes, floats({0, 0, 10, 10, 1, 1, 11, 11, 0, 0, 0, 0, 0, 0, 0, 0}).view({1, 4, 4}),
                "multiclass_nms boxes, zero padded");
  expect_tensor(out_scores, floats({0.9f, 0.6f, 0, 0}).view({1, 4}), "multiclass_nms scores");
  expect_tensor(labels, longs({0, 1, -1, -1}).view({1, 4}), "multiclass_nms labels, -1 padded");
  expect_tensor(count, longs({2}), "multiclass_nms num_detections");
  // Class-agnostic: box 0 of class 0 also suppresses box 1 of class 1.
  auto agnostic = ops::multiclass_nms(boxes, scores, 0.3, 0.5, 4, true, -1);
  expect_tensor(std::get<2>(agnostic), longs({0, -1, -1, -1}).view({1, 4}), "class-agnostic multiclass_nms labels");
  expect_tensor(std::get<3>(agnostic), longs({1}), "class-agnostic multiclass_nms num_detections");
}

void test_roi_align() {
  // input[0, 0, y, x] = x: bilinear sampling of a ramp returns the sampled x.
  std::vector<float> ramp;
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x) ramp.push_back(x);
  const auto input = at::tensor(ramp).view({1, 1, 8, 8});
  const auto rois = floats({0, 1, 1, 5, 5}).view({1, 5});
  // Bins 2 pixels wide, 2 samples each: x in {1.5, 2.5} and {3.5, 4.5}; aligned shifts them by -0.5.
  expect_tensor(ops::roi_align(input, rois, 1.0, 2, 2, 2, false), floats({2, 4, 2, 4}).view({1, 1, 2, 2}),
                "roi_align on a ramp");
  expect_tensor(ops::roi_align(input, rois, 1.0, 2, 2, 2, true), floats({1.5f, 3.5f, 1.5f, 3.5f}).view({1, 1, 2, 2}),
                "roi_align aligned on a ramp");
  // The batch index picks the image; a constant map gives the constant.
  const auto constant = at::full({2, 3, 8, 8}, 7.0f);
  const auto pooled = ops::roi_align(constant, floats({1, 0.5f, 0.5f, 6.5f, 6.5f}).view({1, 5}), 1.0, 3, 3, 0, false);
  expect_tensor(pooled, at::full({1, 3, 3, 3}, 7.0f), "roi_align on a constant map");

  // Backward: each of the 16 samples spreads 1/4 (its bin's mean) over 4 pixels, 1/16 each; per axis the
  // samples at 1.5, 2.5, 3.5, 4.5 weight pixels 1..5 by (1, 2, 2, 2, 1) / 4.
  const auto grad = ops::roi_align_backward(at::full({1, 1, 2, 2}, 1.0f), rois, 1.0, 2, 2, 1, 1, 8, 8, 2, false);
  const auto axis = floats({0, 1, 2, 2, 2, 1, 0, 0}).div(4);
  expect_tensor(grad, axis.view({8, 1}).mul(axis.view({1, 8})).view({1, 1, 8, 8}), "roi_align_backward");
}

void test_multi_scale_roi_align() {
  const std::vector<at::Tensor> features{at::full({1, 1, 8, 8}, 1.0f), at::full({1, 1, 4, 4}, 2.0f)};
  const std::vector<double> scales{1.0, 0.5};
  const auto rois = floats({0, 0, 0, 4, 4, 0, 0, 0, 4, 4, 0, 0, 0, 4, 4}).view({3, 5});
  const auto levels = longs({0, 1, 2});  // level 2 does not exist: zeros
  const auto pooled = ops::multi_scale_roi_align(features, rois, levels, scales, 2, 2, 2, false);
  expect_tensor(pooled, floats({1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0}).view({3, 1, 2, 2}), "multi_scale_roi_align");
  const auto grads = ops::multi_scale_roi_align_backward(at::full({3, 1, 2, 2}, 1.0f), rois, levels, scales, 2, 2,
                                                         1, 1, {8, 4}, {8, 4}, 2, false);
  expect(grads.size() == 2, "multi_scale_roi_align_backward: one gradient per level");
  // Each RoI's 4 output values pass all their gradient (4) to its own level.
  for (size_t level = 0; level < grads.size() && level < 2; ++level) {
    const int64_t side = level == 0 ? 8 : 4;
    expect(grads[level].sizes() == at::IntArrayRef({1, 1, side, side}), "multi_scale_roi_align_backward shape");
    expect(std::abs(grads[level].sum().item<float>() - 4.f) < 1e-5, "multi_scale_roi_align_backward total");
  }
}

void test_paste_masks() {
  // An all-ones 4x4 mask pasted into [2, 6]^2 of an 8x8 image: ones on the pixels whose centres are inside.
  const auto masks = at::full({1, 4, 4}, 1.0f);
  const auto boxes = floats({2, 2, 6, 6}).view({1, 4});
  auto expected = at::zeros({1, 8, 8});
  expected.slice(1, 2, 6).slice(2, 2, 6).fill_(1);
  expect_tensor(ops::paste_masks(masks, boxes, 8, 8, std::nullopt), expected, "paste_masks probabilities");
  expect_tensor(ops::paste_masks(masks, boxes, 8, 8, 0.5), expected.to(at::kBool), "paste_masks binary");
  // Column-major runs 18, 4, 4, 4, 4, 4, 4, 4, 18; COCO's string stores run[i] - run[i - 2] from i = 3,
  // 5 bits a character: 18 -> "b0", 4 -> "4", 0 -> "0", 14 -> ">".
  const auto [chars, offsets] = ops::paste_masks_rle(masks, boxes, 8, 8, 0.5);
  expect_tensor(offsets, longs({0, 10}), "paste_masks_rle offsets");
  const std::string counts(static_cast<const char*>(chars.const_data_ptr()), chars.numel());
  expect(chars.scalar_type() == at::kByte && counts == "b04400000>", "paste_masks_rle counts: got " + counts);
}

void test_fcos_targets() {
  // Box 0 [0, 0, 10, 20] (label 3), box 1 [2, 2, 8, 8] (label 1), 5 classes, stride 8, radius 1.5: each
  // box's sampling square (half-side 12) covers the whole box.
  const auto points = floats({5, 5, 5, 15, 50, 50, 5, 15}).view({4, 2});
  const auto strides = at::full({4}, 8.0f);
  // Point 3 is point 1 with max(l, t, r, b) = 15 outside its size range.
  const auto size_ranges = floats({0, 64, 0, 64, 0, 64, 0, 10}).view({4, 2});
  const auto gt_boxes = floats({0, 0, 10, 20, 2, 2, 8, 8}).view({2, 4});
  const auto gt_labels = longs({3, 1});
  // Point 0 lies in both boxes and takes the smaller one; point 1 lies in box 0 only; point 2 in none.
  const auto [labels, reg_targets, matched] = ops::fcos_targets(points, strides, size_ranges, gt_boxes, gt_labels,
                                                                5, 1.5);
  expect_tensor(labels, longs({1, 3, 5, 5}), "fcos_targets labels");
  expect_tensor(matched, longs({1, 0, -1, -1}), "fcos_targets matched_gt");
  expect_tensor(reg_targets.slice(0, 0, 2), floats({3, 3, 3, 3, 5, 15, 5, 5}).view({2, 4}), "fcos_targets l,t,r,b");
  // Batched: image 1 has the same padded boxes but num_gt 1, so point 0 falls back to box 0.
  const auto [batch_labels, batch_reg, batch_matched] = ops::fcos_targets_batched(
      points, strides, size_ranges, gt_boxes.expand({2, 2, 4}), gt_labels.expand({2, 2}), longs({2, 1}), 5, 1.5);
  expect_tensor(batch_labels, longs({1, 3, 5, 5, 3, 3, 5, 5}).view({2, 4}), "fcos_targets_batched labels");
  expect_tensor(batch_matched, longs({1, 0, -1, -1, 0, 0, -1, -1}).view({2, 4}), "fcos_targets_batched matched_gt");
  expect_tensor(batch_reg[1][0], floats({5, 5, 5, 15}), "fcos_targets_batched l,t,r,b");
}

// Every schema in csrc/pydet.cpp must have a CPU (or backend-agnostic) kernel in this library.
void test_every_op_has_a_cpu_kernel() {
  int pydet_ops = 0;
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("pydet::", 0) != 0) continue;
    ++pydet_ops;
    const auto op = c10::Dispatcher::singleton().findOp(name);
    const bool has_cpu = op->hasKernelForDispatchKey(c10::DispatchKey::CPU) ||
                         op->hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutograd);
    expect(has_cpu, "CPU kernel registered for " + name.name);
  }
  expect(pydet_ops >= 16, "pydet operators registered: " + std::to_string(pydet_ops));
}

void run(const char* name, void (*test)()) {
  try {
    test();
  } catch (const std::exception& error) {
    std::cerr << name << " threw: " << error.what() << "\n";
    ++failures;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " LIBRARY (libpydet_ops.so or pydet/_C*.so)\n";
    return EXIT_FAILURE;
  }
  // Before the library is loaded an entry point throws, and looks the operator up again next time.
  bool threw = false;
  try {
    ops::box_iou(at::zeros({1, 4}), at::zeros({1, 4}));
  } catch (const c10::Error&) {
    threw = true;
  }
  expect(threw, "an entry point throws c10::Error before the library is loaded");
  if (dlopen(argv[1], RTLD_LAZY | RTLD_GLOBAL) == nullptr) {
    std::cerr << "cannot load " << argv[1] << ": " << dlerror() << "\n";
    return EXIT_FAILURE;
  }
  run("box_iou", test_box_iou);
  run("encode/decode_boxes", test_encode_decode);
  run("grid_anchors/grid_points", test_grids);
  run("nms/batched_nms", test_nms);
  run("multiclass_nms", test_multiclass_nms);
  run("roi_align", test_roi_align);
  run("multi_scale_roi_align", test_multi_scale_roi_align);
  run("paste_masks", test_paste_masks);
  run("fcos_targets", test_fcos_targets);
  run("CPU kernels", test_every_op_has_a_cpu_kernel);
  std::cout << (failures == 0 ? "pydet C++ test: all passed" : "pydet C++ test: FAILED") << "\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
