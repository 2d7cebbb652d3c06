"""Shared helpers of the benchmarks: interleaved timing, memory peaks, machine facts, result files.

Absolute times on shared machines drift by a factor of two from one minute to the next, so every
comparison here is measured side by side: each repeat runs every contender once, in alternating order,
and a ratio is the median of the per-repeat ratios (the best times are kept as well).

Beware of a busy machine: when another process holds one of the cores, torch's OpenMP threads wait for
each other at every parallel region and a two-thread run can be five times slower than a one-thread
run. Each result records the load average and CPU pressure before it started; on a shared machine,
``--threads`` set to the idle cores gives steadier figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ first on the path, not the root
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import capnet  # noqa: E402
from capnet.backbone import select_device  # noqa: E402

# The two backbones of the paper; --quick swaps in the tiny architectures registered by capnet.
FULL_MODELS = ("ViT-B-16", "RN50")
QUICK_MODELS = ("capnet-tiny", "capnet-tiny-rn")
QUICK_SWAP = dict(zip(FULL_MODELS, QUICK_MODELS))


# ----------------------------------------------------------------------------------------------- timing


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    """Seconds of each timed repeat."""

    times: list[float]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def as_dict(self) -> dict[str, Any]:
        return {"best_s": self.best, "median_s": self.median, "times_s": [round(t, 5) for t in self.times]}


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def time_fn(fn: Callable[[], Any], device: torch.device | str, *, repeats: int, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        timed(fn, device)
    return Timing([timed(fn, device)[0] for _ in range(repeats)])


def compare(
    fns: dict[str, Callable[[], Any]],
    device: torch.device | str,
    *,
    repeats: int,
    warmup: int = 1,
    budget_s: float = 0.0,
    max_repeats: int = 50,
) -> dict[str, Timing]:
    """Time several functions interleaved: repeat r runs each once, in alternating order.

    With ``budget_s``, fast functions get more repeats (up to ``max_repeats``) so that one round of
    noise weighs less: as many as fit in about that many seconds, judged from the last warm-up round.
    """
    names = list(fns)
    round_s = 0.0
    for _ in range(warmup):
        round_s = sum(timed(fns[name], device)[0] for name in names)
    if budget_s and round_s > 0:
        repeats = max(repeats, min(max_repeats, int(budget_s / round_s)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device)[0])
    return {name: Timing(t) for name, t in times.items()}


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over repeats of numerator_i / denominator_i (the repeats were interleaved)."""
    return statistics.median(a / b for a, b in zip(numerator.times, denominator.times))


# ----------------------------------------------------------------------------------------------- memory


def _status_kb(field: str, pid: int | str = "self") -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory now (MiB)."""
    kb = _status_kb("VmRSS", pid)
    if kb is not None:
        return kb / 1024
    try:
        import psutil

        return psutil.Process(None if pid == "self" else int(pid)).memory_info().rss / 2**20
    except Exception:
        return None


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """Peak resident memory (MiB): VmHWM on Linux, getrusage for this process elsewhere."""
    kb = _status_kb("VmHWM", pid)
    if kb is not None:
        return kb / 1024
    if pid == "self":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


class PeakMemory:
    """Peak RSS (and peak CUDA memory) of a block of code, above what was resident when it started."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.exact = reset_peak_rss()
        self.before = rss_mb() or 0.0
        reset_cuda_peak(self.device)
        sync(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        sync(self.device)
        peak = peak_rss_mb() or 0.0
        self.result = {
            "rss_before_mb": round(self.before, 1),
            "peak_rss_mb": round(peak, 1),
            "peak_rss_increase_mb": round(peak - self.before, 1) if self.exact else None,
            "peak_cuda_mb": _round(cuda_peak_mb(self.device)),
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ----------------------------------------------------------------------------------------------- models


def load_random(name: str, device: torch.device, seed: int = 0) -> capnet.Backbone:
    """A randomly initialised backbone: the pretrained one costs exactly the same to run."""
    torch.manual_seed(seed)
    quick_gelu = name not in QUICK_MODELS  # OpenAI's ViT-B/16 and RN50 weights use QuickGELU
    return capnet.load_backbone(name=name, pretrained=None, quick_gelu=quick_gelu, device=str(device))


def model_names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list(FULL_MODELS)
    return [QUICK_SWAP.get(n, n) for n in names] if args.quick else names


# ----------------------------------------------------------------------------------------------- data


def photo(width: int = 640, height: int = 480, seed: int = 0):
    """A photo-sized RGB PIL image: smooth gradients plus noise, so that resizing and JPEG do real work."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = np.stack(
        [127 + 100 * np.sin(x / (37 + 11 * k) + y / (53 + 7 * k) + phase[k]) for k in range(3)], axis=-1
    )
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_photos(
    folder: Path,
    n: int,
    class_names: Sequence[str],
    *,
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
    labels_per_image: float = 2.0,
    quality: int = 90,
):
    """n JPEGs of ``size`` (VOC's typical 500x375) with random multi-labels, as capnet Records."""
    import numpy as np

    from capnet.data import Records

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c = len(class_names)
    labels = (rng.random((n, c)) < min(1.0, labels_per_image / c)).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1  # every image has at least one label
    labels[rng.integers(0, n, c), np.arange(c)] = 1  # every class has at least one image
    paths = []
    for i in range(n):
        path = folder / f"img_{i:05d}.jpg"
        if not path.is_file():
            photo(*size, seed=seed * 100_003 + i).save(path, quality=quality)
        paths.append(path)
    return Records(list(class_names), [p.stem for p in paths], paths, labels)


# ----------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_gb() -> float | None:
    kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kb = float(line.split()[1])
    except OSError:
        return None
    return None if kb is None else round(kb / 2**20, 1)


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in percent."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    device = device or select_device()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": memory_total_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {
            "torch": torch.__version__,
            "open_clip": _version("open_clip"),
            "capnet": capnet.__version__,
            "torchvision": _version("torchvision"),
            "pillow": _version("PIL"),
            "numpy": _version("numpy"),
        },
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_pressure_avg10": cpu_pressure(),
    }
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        info["git"] = head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    return info


# ----------------------------------------------------------------------------------------------- CLI


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny models and sizes: a smoke test, not figures")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, ...")
    p.add_argument("--models", default=None, help=f"comma-separated open_clip names (default {FULL_MODELS})")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    pressure = cpu_pressure()
    if pressure is not None and pressure > 20 and torch.get_num_threads() > 1:
        print(
            f"warning: the CPU is busy (pressure {pressure:.0f}% over 10 s); with {torch.get_num_threads()} "
            "threads the timings will be slow and noisy (--threads 1 is steadier on a shared machine)",
            file=sys.stderr,
        )
    return select_device(args.device)


def new_result(bench: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {
        "bench": bench,
        "quick": bool(args.quick),
        "device": str(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if sys.argv else bench,
        "machine": machine_info(device),
        "tables": {},  # title -> list of row dicts
        "ratios": {},  # "name[model]" -> value
        "targets": [],  # {"name", "value", "target", "met"}
        "notes": [],
    }


def add_target(result: dict[str, Any], name: str, value: float | None, op: str, bound: float) -> None:
    """Record a ratio against its target (op is '>=' or '<=')."""
    met = None if value is None else (value >= bound if op == ">=" else value <= bound)
    result["targets"].append({"name": name, "value": value, "target": f"{op} {bound:g}", "met": met})


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def report_text(result: dict[str, Any]) -> str:
    """The human-readable form of one benchmark's result: tables, ratios and targets."""
    out = []
    for title, rows in result["tables"].items():
        out.append(f"### {title}\n\n" + markdown_table(rows))
    if result["ratios"]:
        out.append("ratios:\n" + "\n".join(f"  {k} = {fmt(v)}" for k, v in result["ratios"].items()))
    for t in result["targets"]:
        status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        out.append(f"target {t['name']}: {fmt(t['value'])} (target {t['target']}) {status}")
    out += [f"note: {n}" for n in result["notes"]]
    return "\n".join(out)


def finish(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    print(report_text(result), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


def run_worker(script: Path, payload: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker JSON`` in a fresh interpreter (a clean peak RSS) and return its JSON line."""
    cmd = [sys.executable, str(script), "--worker", json.dumps(payload)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"worker {payload} failed (exit {proc.returncode}): " + " | ".join(tail))
