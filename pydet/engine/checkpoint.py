"""Checkpoints that load without executing pickled code: one safetensors file.

The tensors (model, EMA, optimizer state, generator states) are safetensors entries named
``<section>/<key>``; everything else (optimizer hyper-parameters, scheduler state, epoch and step,
Python's generator state, the model's name, build arguments and categories) is JSON in the file's
metadata under ``"pydet"``. Weights from elsewhere (``.pt``/``.pth`` state dicts) are read with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError, require_file

FORMAT = "pydet-checkpoint-1"


@dataclass
class Checkpoint:
    tensors: dict[str, dict[str, torch.Tensor]]  # section -> key -> tensor
    meta: dict = field(default_factory=dict)

    def section(self, name: str) -> dict[str, torch.Tensor]:
        return self.tensors.get(name, {})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's generator states: tensors and JSON parts."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, py_state, gauss = random.getstate()
    return tensors, {"python": [version, list(py_state), gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))


def _optimizer_to_flat(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, scalars in meta["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler=None, ema: nn.Module | None = None, ema_updates: int = 0, step: int = 0,
                    epoch: int = 0, rng_states: list[tuple[dict, dict]] | None = None, meta: dict | None = None) -> None:
    """Write atomically (temporary file, then rename). ``rng_states``: one per rank, defaults to this process's."""
    from safetensors.torch import save_file

    sections = {"model": model.state_dict()}
    info = {"format": FORMAT, "step": int(step), "epoch": int(epoch), **(meta or {})}
    if ema is not None:
        sections["ema"] = ema.state_dict()
        info["ema_updates"] = int(ema_updates)
    if optimizer is not None:
        sections["optimizer"], info["optimizer"] = _optimizer_to_flat(optimizer.state_dict())
    if scheduler is not None:
        info["scheduler"] = scheduler.state_dict()
    info["rng"] = []
    for rank, (tensors, rng_meta) in enumerate(rng_states or [rng_state()]):
        sections[f"rng{rank}"] = tensors
        info["rng"].append(rng_meta)
    # clone: safetensors refuses tensors that share memory, and wants them contiguous on the CPU
    flat = {f"{name}/{key}": value.detach().to("cpu", copy=True).contiguous()
            for name, section in sections.items() for key, value in section.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp), metadata={"pydet": json.dumps(info)})
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    path = require_file(path)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("pydet", "{}"))
            for name in f.keys():
                section, key = name.split("/", 1) if "/" in name else ("model", name)
                tensors.setdefault(section, {})[key] = f.get_tensor(name)
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    return Checkpoint(tensors, meta)


def restore_training_state(checkpoint: Checkpoint, *, model: nn.Module, optimizer=None, scheduler=None,
                           ema: nn.Module | None = None, rank: int = 0) -> None:
    """Load what ``save_checkpoint`` wrote back into live objects, generator states included."""
    model.load_state_dict(checkpoint.section("model"))
    meta = checkpoint.meta
    if ema is not None and checkpoint.section("ema"):
        ema.load_state_dict(checkpoint.section("ema"))
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(_optimizer_from_flat(checkpoint.section("optimizer"), meta["optimizer"]))
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    if meta.get("rng"):
        own = rank if rank < len(meta["rng"]) else 0
        set_rng_state(checkpoint.section(f"rng{own}"), meta["rng"][own])


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """A model state dict and the metadata saved with it, from a pydet checkpoint or a plain state dict.

    A pydet checkpoint with EMA weights gives those (they are the ones to evaluate). ``.pt``/``.pth``
    files are read with ``torch.load(weights_only=True)``, detectron2 model-zoo ``.pkl`` files (numpy
    arrays) with an unpickler that admits nothing else; a ``{"model": ...}`` or ``{"state_dict": ...}``
    wrapper is unwrapped.
    """
    from ..convert._normalization import load_numpy_pickle

    path = require_file(path)
    if path.suffix == ".safetensors":
        checkpoint = load_checkpoint(path)
        return checkpoint.section("ema") or checkpoint.section("model"), checkpoint.meta
    try:
        if path.suffix == ".pkl":
            obj = load_numpy_pickle(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and torch raise UnpicklingError, RuntimeError, EOFError ... for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot load weights safely ({first_line})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if isinstance(obj, dict):
        obj = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) and v.dtype.kind in "fiub" else v
               for k, v in obj.items()}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return obj, {}
