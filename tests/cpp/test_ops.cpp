// Calls pydet's operators through the c10 dispatcher from C++, with no Python involved.
// Usage: pydet_cpp_test LIBRARY, where LIBRARY is libpydet_ops.so (the CMake library) or the Python
// extension pydet/_C*.so: loading either runs the TORCH_LIBRARY registrations. The extension's only
// Python symbol is its module init function, which is never called here, so lazy binding loads it.
#include <dlfcn.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " LIBRARY (libpydet_ops.so or pydet/_C*.so)\n";
    return EXIT_FAILURE;
  }
  if (dlopen(argv[1], RTLD_LAZY | RTLD_GLOBAL) == nullptr) {
    std::cerr << "cannot load " << argv[1] << ": " << dlerror() << "\n";
    return EXIT_FAILURE;
  }
  auto box_iou = c10::Dispatcher::singleton().findSchemaOrThrow("pydet::box_iou", "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&)>();
  const auto a = torch::tensor({{0.f, 0.f, 10.f, 10.f}, {5.f, 5.f, 15.f, 15.f}});
  const auto iou = box_iou.call(a, a);
  expect(iou.sizes() == at::IntArrayRef({2, 2}), "box_iou shape");
  expect(std::abs(iou[0][1].item<float>() - 25.f / 175.f) < 1e-6, "box_iou value");
  expect(std::abs(iou[1][1].item<float>() - 1.f) < 1e-6, "box_iou diagonal");

  // Every schema in csrc/pydet.cpp must have a CPU (or backend-agnostic) kernel in this library.
  int pydet_ops = 0;
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("pydet::", 0) != 0) continue;
    ++pydet_ops;
    const auto op = c10::Dispatcher::singleton().findOp(name);
    const bool has_cpu = op->hasKernelForDispatchKey(c10::DispatchKey::CPU) ||
                         op->hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutograd);
    if (!has_cpu) std::cerr << "no CPU kernel for " << name.name << "\n";
    expect(has_cpu, "CPU kernel registered");
  }
  expect(pydet_ops > 0, "pydet operators registered");
  std::cout << (failures == 0 ? "pydet C++ smoke test: all passed" : "pydet C++ smoke test: FAILED") << "\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
