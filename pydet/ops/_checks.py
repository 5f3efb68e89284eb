"""Argument validation shared by the op wrappers: clear errors that name the argument."""
from __future__ import annotations

import torch
from torch import Tensor

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x, name: str, *, dims: int | tuple[int, ...] | None = None, last: int | None = None,
                 dtypes=FLOATING) -> None:
    """Raise TypeError/ValueError unless ``x`` is a tensor of the expected rank, last size and dtype."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dims is not None:
        allowed = (dims,) if isinstance(dims, int) else dims
        if x.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape "
                             f"{tuple(x.shape)}")
    if last is not None and (x.dim() == 0 or x.shape[-1] != last):
        raise ValueError(f"{name} must have last dimension {last}, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")


def check_boxes(x, name: str) -> None:
    check_tensor(x, name, dims=2, last=4)


def check_same_device(*named: tuple[str, Tensor]) -> None:
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} must be on the same device as {first_name} ({first.device}), got {t.device}")


def check_same_dtype(*named: tuple[str, Tensor]) -> None:
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            raise ValueError(f"{name} must have the same dtype as {first_name} ({first.dtype}), got {t.dtype}")


def check_float(value, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite Python number within [low, high]."""
    if isinstance(value, Tensor):
        raise TypeError(f"{name} must be a Python number, not a tensor")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if v != v:
        raise ValueError(f"{name} must not be NaN")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {v}")
    return v
