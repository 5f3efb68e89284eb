"""Float64 pure-PyTorch reference implementations of pydet's operators.

They are written for clarity, not speed, and follow torchvision's formulas step by step. Tests compare
every kernel with them, and the benchmarks time them as the baseline where torchvision is absent.
One module per operator group, named like the wrapper module in :mod:`pydet.ops`.
"""
