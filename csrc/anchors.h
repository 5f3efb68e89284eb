#pragma once

#include <ATen/core/Tensor.h>

#include "common.h"

namespace pydet {

inline void check_grid_anchors_args(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                    at::IntArrayRef strides) {
  const size_t levels = cell_anchors.size();
  TORCH_CHECK_VALUE(feature_sizes.size() == 2 * levels, "feature_sizes must hold one (height, width) pair per ",
                    "level: ", levels, " levels of cell_anchors but ", feature_sizes.size(), " values");
  TORCH_CHECK_VALUE(strides.size() == 2 * levels, "strides must hold one (stride_h, stride_w) pair per level: ",
                    levels, " levels of cell_anchors but ", strides.size(), " values");
  for (size_t i = 0; i < levels; ++i) {
    check_boxes(cell_anchors[i], "cell_anchors");
    TORCH_CHECK_VALUE(cell_anchors[i].device() == cell_anchors[0].device(),
                      "cell_anchors must all be on one device");
    TORCH_CHECK_VALUE(feature_sizes[2 * i] >= 0 && feature_sizes[2 * i + 1] >= 0,
                      "feature_sizes must be non-negative");
  }
}

}  // namespace pydet
