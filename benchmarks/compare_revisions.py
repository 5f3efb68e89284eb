"""pydet's CPU kernels at an older git revision against the working tree, side by side in one process.

    python -m benchmarks.compare_revisions --base eb32dc6 [--threads 2] [--out FILE.md]

Timing two builds in separate processes mixes the code's difference with whatever else the machine did in
between; on a shared machine that noise is larger than most kernel changes. Here both builds live in the
same process and are called alternately on the same input tensors, so a burst of load slows both alike.

Why the operator namespace is renamed: two builds cannot normally share a process, because each registers
the ``pydet`` operator namespace and torch refuses a second ``TORCH_LIBRARY(pydet, ...)``. So the base
revision's ``csrc/`` is exported (``git archive``) to a cache directory and that copy, only, is renamed to
the ``pydet_base`` namespace (``TORCH_LIBRARY(pydet_base, ...)``, ``"pydet_base::op"`` lookups), compiled
with setup.py's flags and loaded as a plain operator library: ``torch.ops.pydet_base.*``. The copy leaves
out the Python module init (python_module.cpp), ``set_python_module`` (those Python modules belong to the
current package) and the CUDA sources. C++ symbols stay hidden (``-fvisibility=hidden``), so the
libraries' ``pydet::`` C++ namespaces do not clash.

The working tree's ``csrc/`` is built the same way, as ``torch.ops.pydet_now.*``: the same compiler, flags
and link, so that only the code differs. The installed extension (``torch.ops.pydet``, built by setup.py)
can be timed instead with ``--installed``, but its binary differs from a ``cpp_extension.load`` build of
the very same sources by up to ~15% on some kernels (code layout), which would be read as a code change.

The raw operators are called with identical positional arguments on the benchmark suite's inputs
(``benchmarks/test_bench_*.py``), under ``torch.inference_mode()`` (no autograd dispatch: the kernels
alone). Each case is warmed up and its outputs compared, then timed in short rounds of ``calls`` calls per
build, the two builds' order swapped every round. Reported: each build's median ms per call, and the
median (with quartiles) of the rounds' now / base ratios, whose two samples ran back to back under the
same load. An operator missing from the base revision, or whose schema differs, is listed as skipped.
"""
import argparse
import ast
import datetime
import hashlib
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import pydet  # noqa: F401  (torch.ops.pydet.*, and the Python helpers that build the inputs)

REPO = Path(__file__).resolve().parent.parent
BASE, NOW, INSTALLED = "pydet_base", "pydet_now", "pydet"
CACHE = Path(tempfile.gettempdir()) / "pydet-compare-revisions"


# ---- the two builds: the base revision and the working tree as operator libraries of their own ----

def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def rename_namespace(source: str, namespace: str) -> str:
    """The C++ source with its operators in ``namespace`` instead of ``pydet``, without ``set_python_module``."""
    source = re.sub(r"\b(TORCH_LIBRARY(?:_IMPL|_FRAGMENT)?)\(\s*pydet\s*,", rf"\1({namespace},", source)
    source = source.replace('"pydet::', f'"{namespace}::')
    return re.sub(r"^[ \t]*m\.set_python_module\([^;]*\);[^\n]*\n", "", source, flags=re.MULTILINE)


def export_revision(sha: str, directory: Path) -> None:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "csrc"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)


def export_working_tree(directory: Path) -> None:
    shutil.copytree(REPO / "csrc", directory / "csrc")


def working_tree_key() -> str:
    """A digest of the working tree's csrc/, committed or not: its build is cached under it."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "csrc").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def exported_sources(directory: Path, namespace: str, export: Callable[[Path], None]) -> list[Path]:
    """The renamed CPU sources (as setup.py lists them, less python_module.cpp), exported once into
    ``directory``: unchanged files let the build cache skip the compilation next time."""
    done = directory / ".exported"
    if not done.exists():
        shutil.rmtree(directory, ignore_errors=True)  # an interrupted export
        directory.mkdir(parents=True)
        export(directory)
        for path in (directory / "csrc").rglob("*"):
            if path.suffix in (".cpp", ".h", ".cuh", ".cu"):
                path.write_text(rename_namespace(path.read_text(), namespace))
        done.touch()
    folders = [directory / "csrc", directory / "csrc" / "autocast", directory / "csrc" / "cpu"]
    return [src for folder in folders for src in sorted(folder.glob("*.cpp")) if src.name != "python_module.cpp"]


def setup_compile_flags() -> tuple[list[str], list[str]]:
    """The compiler and linker flags the working tree's setup.py builds pydet._C with.

    setuptools puts Python's own CFLAGS first (-DNDEBUG, -fwrapv, -O3: they change the generated code),
    then setup.py's define_macros and ``cxx_flags``; ``extra_link_args`` go to the linker.
    """
    values = {}
    for node in ast.walk(ast.parse((REPO / "setup.py").read_text())):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("define_macros", "cxx_flags", "extra_link_args"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    if len(values) != 3:
        raise RuntimeError("setup.py no longer assigns define_macros, cxx_flags and extra_link_args as literals")
    python_cflags = shlex.split(sysconfig.get_config_var("CFLAGS") or "")
    macros = [f"-D{name}={value}" for name, value in values["define_macros"]]
    return python_cflags + macros + values["cxx_flags"], values["extra_link_args"]


def build_library(namespace: str, key: str, export: Callable[[Path], None], verbose: bool = False) -> None:
    """Compile (or reuse from the cache) exported sources and load them as ``torch.ops.<namespace>``."""
    from torch.utils.cpp_extension import load

    directory = CACHE / f"{namespace}-{key}"
    sources = exported_sources(directory, namespace, export)
    (directory / "build").mkdir(exist_ok=True)
    cflags, ldflags = setup_compile_flags()
    load(name=f"{namespace}_{key[:12]}", sources=[str(s) for s in sources], extra_cflags=cflags,
         extra_ldflags=ldflags, build_directory=str(directory / "build"), with_cuda=False, is_python_module=False,
         verbose=verbose)


def build_base(revision: str, verbose: bool = False) -> str:
    """``revision``'s kernels as torch.ops.pydet_base; returns its full hash."""
    sha = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    build_library(BASE, sha, lambda directory: export_revision(sha, directory), verbose)
    return sha


def build_working_tree(verbose: bool = False) -> None:
    """The working tree's kernels, built as the base's, as torch.ops.pydet_now."""
    build_library(NOW, working_tree_key(), export_working_tree, verbose)


# ---- the benchmark suite's inputs ----

@dataclass
class Case:
    name: str  # as the benchmark group
    op: str  # operator name, the same in both namespaces
    make_args: Callable[[], tuple]  # positional arguments of the raw operator


def fixture_value(fixture):
    """A benchmark module's fixture, called as a plain function (pytest's wrapper refuses direct calls)."""
    return getattr(fixture, "__wrapped__", fixture)()


def nms_cases() -> list[Case]:
    from benchmarks import test_bench_nms as bench

    def yolo_args():
        boxes, scores = bench._yolo_outputs("cpu")
        y = bench.YOLO  # class_agnostic False and no pre-NMS top-k: ops.multiclass_nms's defaults
        return boxes, scores, y["score_threshold"], y["iou_threshold"], y["max_per_image"], False, -1

    cases = [Case(f"nms-{n // 1000}k", "nms", lambda n=n: (*bench._inputs(n, 1, "cpu")[:2], bench.IOU))
             for n in (1000, 5000, 20000)]
    cases.append(Case("batched_nms-20k-80cls", "batched_nms", lambda: (*bench._inputs(20000, 80, "cpu"), bench.IOU)))
    cases.append(Case("multiclass_nms-yolov7-640-b16", "multiclass_nms", yolo_args))
    return cases


def roi_align_cases() -> list[Case]:
    from benchmarks import test_bench_roi_align as bench
    from pydet.ops.roi_align import convert_boxes_to_rois, fpn_levels, level_range

    def forward_args(memory_format=torch.contiguous_format):
        x, rois, _ = fixture_value(bench.problem)
        x = x.contiguous(memory_format=memory_format)
        return x, rois, bench.SCALE, bench.OUTPUT, bench.OUTPUT, bench.SAMPLING, False

    def backward_args():
        x, rois, grad = fixture_value(bench.problem)
        return grad, *bench._backward_args(x, rois)

    def multi_scale_args():  # the levels MultiScaleRoIAlign's default (torchvision) rule gives
        features, boxes = fixture_value(bench.fpn)
        rois, scales = convert_boxes_to_rois(boxes), [0.25, 0.125, 0.0625, 0.03125]
        levels = fpn_levels(rois[:, 1:], *level_range(scales))
        return list(features.values()), rois, levels, scales, bench.OUTPUT, bench.OUTPUT, bench.SAMPLING, False

    return [
        Case("roi_align-forward-1000x2x256x200x304", "roi_align", forward_args),
        Case("roi_align-forward-1000x2x256x200x304-channels-last", "roi_align",
             lambda: forward_args(torch.channels_last)),
        Case("roi_align-backward-1000x2x256x200x304", "roi_align_backward", backward_args),
        Case("multi_scale_roi_align-1000-fpn-800x1216", "multi_scale_roi_align", multi_scale_args),
    ]


def paste_masks_cases() -> list[Case]:
    from benchmarks import test_bench_paste_masks as bench

    def args(fixture, image):
        masks, boxes = fixture_value(fixture)
        return masks, boxes, *image, bench.THRESHOLD

    return [Case("paste_masks-100x28x28-800x1216", "paste_masks", lambda: args(bench.inputs, bench.IMAGE)),
            Case("paste_masks_rle-100x28x28-1024x1024", "paste_masks_rle",
                 lambda: args(bench.rle_inputs, bench.RLE_IMAGE))]


def fcos_targets_cases() -> list[Case]:
    from benchmarks import test_bench_fcos_targets as bench

    radius = 1.5  # ops.fcos_targets' default, which the benchmark uses

    def single_args():
        (points, strides, ranges), (boxes, labels) = fixture_value(bench.inputs)
        return points, strides, ranges, boxes, labels, bench.NUM_CLASSES, radius

    def batched_args():
        (points, strides, ranges), _ = fixture_value(bench.inputs)
        per_image = [bench._gt(seed) for seed in range(bench.BATCH)]
        boxes, labels = torch.stack([b for b, _ in per_image]), torch.stack([lb for _, lb in per_image])
        num_gt = torch.full((bench.BATCH,), bench.NUM_GT)
        return points, strides, ranges, boxes, labels, num_gt, bench.NUM_CLASSES, radius

    return [Case("fcos_targets-22k-100gt", "fcos_targets", single_args),
            Case("fcos_targets_batched-8x22k-100gt", "fcos_targets_batched", batched_args)]


def boxes_cases() -> list[Case]:
    from benchmarks import test_bench_boxes as bench
    from pydet import ops
    from pydet.ops.boxes import DEFAULT_SCALE_CLAMP

    weights = [1.0, 1.0, 1.0, 1.0]  # the ops' default weights, which the benchmarks use

    def boxes_args(pick):
        anchors, codes = fixture_value(bench.boxes)
        return pick(anchors, codes)

    def grid_anchors_args():
        cells = [ops.cell_anchors((s,), (0.5, 1.0, 2.0)) for s in bench.ANCHOR_SIZES]
        flat = lambda pairs: [v for pair in pairs for v in pair]  # noqa: E731  (the schema's (h, w) pairs)
        return cells, flat(bench.FPN_SIZES), flat(bench.FPN_STRIDES)

    return [
        Case("decode_boxes-200k", "decode_boxes",
             lambda: boxes_args(lambda a, c: (c, a, weights, DEFAULT_SCALE_CLAMP))),
        Case("encode_boxes-200k", "encode_boxes",
             lambda: boxes_args(lambda a, c: (a.flip(0).contiguous(), a, weights))),
        Case("box_iou-2000x500", "box_iou", lambda: boxes_args(lambda a, c: (a[:2000], a[2000:2500]))),
        Case("grid_anchors-fpn-800x1216", "grid_anchors", grid_anchors_args),
    ]


def benchmark_cases() -> list[Case]:
    return nms_cases() + roi_align_cases() + paste_masks_cases() + fcos_targets_cases() + boxes_cases()


# ---- the timing: both builds, alternately, in this process ----

@dataclass
class Row:
    case: Case
    base_ms: float | None = None
    current_ms: float | None = None
    ratios: list[float] | None = None  # now / base of each round's two samples: quartiles (q1, median, q3)
    calls: int = 0
    outputs: str = ""
    skipped: str = ""


def raw_op(namespace: str, name: str):
    try:
        return getattr(getattr(torch.ops, namespace), name).default
    except (AttributeError, RuntimeError):
        return None


def schema_difference(name: str, current: str) -> str:
    """Why the two builds' ``name`` cannot be called alike ('' when they can)."""
    base_op, current_op = raw_op(BASE, name), raw_op(current, name)
    if base_op is None:
        return "not in the base revision"
    unqualified = lambda op: str(op._schema).split("::", 1)[1]  # noqa: E731
    if unqualified(base_op) != unqualified(current_op):
        return f"schema differs: base `{unqualified(base_op)}`"
    return ""


def flat_outputs(output) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (tuple, list)) else [output]


def compare_outputs(base_output, current_output) -> str:
    """'equal', 'close (max abs diff ...)' for floating outputs within allclose, else 'DIFFERENT (...)'."""
    worst = 0.0
    for b, c in zip(flat_outputs(base_output), flat_outputs(current_output), strict=True):
        if b.dtype != c.dtype or b.shape != c.shape:
            return f"DIFFERENT ({b.dtype}{list(b.shape)} vs {c.dtype}{list(c.shape)})"
        if torch.equal(b, c):
            continue
        if not b.is_floating_point() or not torch.allclose(b, c, equal_nan=True):
            return "DIFFERENT (values)"
        worst = max(worst, (b - c).abs().nan_to_num().max().item())
    return "equal" if worst == 0.0 else f"close (max abs diff {worst:.1e})"


def seconds_per_call(op, args, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        op(*args)
    return (time.perf_counter() - start) / calls


def measure_case(case: Case, current: str, rounds: int, sample_seconds: float) -> Row:
    """Warm-up and output check, then ``rounds`` samples per build, alternating (order swapped each round)."""
    row = Row(case, skipped=schema_difference(case.op, current))
    if row.skipped:
        return row
    ops = {BASE: raw_op(BASE, case.op), current: raw_op(current, case.op)}
    args = case.make_args()
    with torch.inference_mode():
        outputs = {ns: op(*args) for ns, op in ops.items()}
        row.outputs = compare_outputs(outputs[BASE], outputs[current])
        # The fastest of a few single calls: one call that a busy machine delayed would set calls too low.
        one_call = max(min(seconds_per_call(op, args, 1) for _ in range(3)) for op in ops.values())
        row.calls = max(1, round(sample_seconds / one_call))
        samples = {BASE: [], current: []}
        for index in range(rounds):
            for ns in (BASE, current) if index % 2 == 0 else (current, BASE):
                samples[ns].append(seconds_per_call(ops[ns], args, row.calls))
    row.base_ms, row.current_ms = (statistics.median(samples[ns]) * 1e3 for ns in (BASE, current))
    # Each round's two samples ran back to back, under the same load: their ratio cancels most of it.
    paired = [now / base for base, now in zip(samples[BASE], samples[current])]
    row.ratios = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    return row


# ---- the note ----

def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1 / 5 / 15 min)"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_report(rows: list[Row], base: str, current: str, threads: int, rounds: int,
                    loads: tuple[str, str]) -> str:
    tree = git("describe", "--always", "--dirty")
    now = ("the installed extension, `torch.ops.pydet`" if current == INSTALLED else
           "the working tree's, built the same way as `torch.ops.pydet_now`")
    lines = [
        f"# CPU kernels: {base[:7]} against the working tree ({tree}), one process",
        "",
        f"{datetime.date.today()}, {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{threads} thread(s). Load average before: {loads[0]}; after: {loads[1]}.",
        "",
        f"`python -m benchmarks.compare_revisions --base {base[:7]} --threads {threads}"
        f"{' --installed' if current == INSTALLED else ''}`: the base revision's kernels built as "
        f"`torch.ops.pydet_base` (setup.py's flags), against {now}; the raw operators called alternately "
        f"(order swapped every round) on the benchmark suite's inputs; median over {rounds} rounds of `calls` "
        "calls each, ms per call. ratio: the median over rounds of now / base, each round's two samples having run "
        "back to back under the same load (below 1: now faster), with its interquartile range.",
        "",
        "| kernel | op | calls | base ms | now ms | ratio | ratio IQR | outputs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.case.name} | `{row.case.op}` | | | | | | skipped: {row.skipped} |")
        else:
            lines.append(f"| {row.case.name} | `{row.case.op}` | {row.calls} | {row.base_ms:.3f} | "
                         f"{row.current_ms:.3f} | {row.ratios[1]:.2f} | "
                         f"{row.ratios[0]:.2f}-{row.ratios[2]:.2f} | "
                         f"{row.outputs} |")
    return "\n".join(lines) + "\n"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against (commit, tag, branch)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=41, help="timed rounds per build (default 41)")
    parser.add_argument("--sample-seconds", type=float, default=0.02,
                        help="about how long one build's calls take in a round (default 0.02: short rounds "
                        "alternate the builds finely, so bursts of other load hit both alike)")
    parser.add_argument("--installed", action="store_true",
                        help="time the installed extension (torch.ops.pydet) as 'now', not a build of the "
                        "working tree made as the base's")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--verbose", action="store_true", help="show the builds")
    options = parser.parse_args()
    if options.threads < 1 or options.rounds < 1 or options.sample_seconds <= 0:
        parser.error("--threads, --rounds and --sample-seconds must be positive")
    return options


def main() -> None:
    options = parse_arguments()
    base = build_base(options.base, options.verbose)
    if not options.installed:
        build_working_tree(options.verbose)
    current = INSTALLED if options.installed else NOW
    cases = [case for case in benchmark_cases() if options.only in case.name]
    torch.set_num_threads(options.threads)  # after benchmarks/conftest.py (imported with the cases) set its own
    before = load_average()
    rows = []
    for case in cases:
        rows.append(measure_case(case, current, options.rounds, options.sample_seconds))
        print(f"{case.name}: done", flush=True)
    report = markdown_report(rows, base, current, options.threads, options.rounds, (before, load_average()))
    print(report)
    if options.out:
        options.out.write_text(report)


if __name__ == "__main__":
    main()
