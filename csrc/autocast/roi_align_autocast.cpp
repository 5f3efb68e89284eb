// Autocast for RoIAlign (CUDA's Autocast key and AutocastCPU): like torchvision, the op runs in
// float32 and returns the input's dtype. Device-independent, so it is built with or without CUDA.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <vector>

namespace pydet {
namespace {

at::Tensor upcast(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return (s == at::kHalf || s == at::kBFloat16) ? t.to(at::kFloat) : t;
}

template <c10::DispatchKey autocast_key>
at::Tensor roi_align_autocast(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::roi_align", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t,
                                               int64_t, bool)>();
  return op.call(upcast(input), upcast(rois), spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)
      .to(input.scalar_type());
}

template <c10::DispatchKey autocast_key>
at::Tensor multi_scale_roi_align_autocast(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                          c10::ArrayRef<double> scales, int64_t pooled_h, int64_t pooled_w,
                                          int64_t sampling_ratio, bool aligned) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pydet::multi_scale_roi_align", "")
                             .typed<at::Tensor(at::TensorList, const at::Tensor&, const at::Tensor&,
                                               c10::ArrayRef<double>, int64_t, int64_t, int64_t, bool)>();
  TORCH_CHECK_VALUE(!features.empty(), "features must hold at least one feature map");
  std::vector<at::Tensor> upcast_features;
  for (const auto& f : features) upcast_features.push_back(upcast(f));
  return op.call(upcast_features, upcast(rois), levels, scales, pooled_h, pooled_w, sampling_ratio, aligned)
      .to(features[0].scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pydet, Autocast, m) {
  m.impl("roi_align", &roi_align_autocast<c10::DispatchKey::Autocast>);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_autocast<c10::DispatchKey::Autocast>);
}

TORCH_LIBRARY_IMPL(pydet, AutocastCPU, m) {
  m.impl("roi_align", &roi_align_autocast<c10::DispatchKey::AutocastCPU>);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_autocast<c10::DispatchKey::AutocastCPU>);
}

}  // namespace pydet
