// `import pydet._C` loads this shared library, which runs the TORCH_LIBRARY registrations. The
// module itself is empty: every operator is reached through torch.ops.pydet.*. Kept out of the
// CMake build, which produces a plain library for libtorch (C++) users.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "pydet's C++/CUDA operators (see torch.ops.pydet)", -1, nullptr};
  return PyModule_Create(&module_def);
}
