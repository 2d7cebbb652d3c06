"""Scaling with classes: the text-tower cost of a training step and its peak memory at 20 to 1,000 classes.

Every class has its own prompt, so each training step sends C prompts (16 context tokens plus the name)
through the text tower, forward and backward. Each configuration runs in a fresh interpreter, so its
peak RSS is its own: the peak of one training step (after a warm-up) and its increase over the loaded
model. Rows:
- ``cached``: frozen image tower, a batch of cached image features (the step is prompts, GCN, loss);
- ``adapters``: the default tuned image tower, a batch of images through it forward and backward;
- ``classes_per_step=K``: only K prompts per step (the batch's positives first), the other classes from
  the feature bank, which is refreshed once per epoch (that refresh is timed too);
- ``class_chunk=N``: all prompts, N classes per text-tower pass, each chunk checkpointed (recomputed in
  the backward pass): the same gradients with one chunk's activations.
Names: VOC (20), COCO (80), NUS-WIDE (81), ImageNet (1,000; the two repeated names made unique). The
label graph uses one template here ("a photo of a {}.") to keep model construction short.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_training import instrumented_step  # noqa: E402
from benchmarks.common import (  # noqa: E402
    PeakMemory,
    add_target,
    finish,
    load_random,
    memory_total_gb,
    model_names,
    new_result,
    parser,
    rss_mb,
    run_worker,
    setup,
)
from capnet.backbone import image_size, select_device  # noqa: E402
from capnet.config import (  # noqa: E402
    AdapterConfig,
    GraphConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
)
from capnet.engine.schedule import build_optimizer  # noqa: E402
from capnet.engine.trainer import loss_from_config, sample_classes  # noqa: E402
from capnet.labelsets import COCO, NUS_WIDE, VOC  # noqa: E402
from capnet.model import CapNet  # noqa: E402


def class_names(count: int) -> list[str]:
    """VOC, COCO or NUS-WIDE when the count is theirs, else the first ``count`` ImageNet names."""
    for names in (VOC, COCO, NUS_WIDE):
        if count == len(names):
            return list(names)
    if count < len(VOC):
        return list(VOC[:count])
    from open_clip import IMAGENET_CLASSNAMES

    seen: set[str] = set()
    out = []
    for name in IMAGENET_CLASSNAMES[:count]:
        while name.lower() in seen:  # "missile" and "sunglasses" appear twice
            name += " (2)"
        seen.add(name.lower())
        out.append(name)
    return out


def measure(payload: dict) -> list[dict]:
    """One model: build, warm up, then time a training step and its peak memory: over all classes, then
    (same process) with the text pass in chunks when ``chunk``, then K classes per step when ``per_step``."""
    device = select_device(payload["device"])
    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    count, mode, per_step, batch = payload["classes"], payload["mode"], payload["per_step"], payload["batch"]
    names = class_names(count)
    backbone = load_random(payload["model"], device)
    config = ModelConfig(
        adapter=AdapterConfig(kind="auto" if mode == "adapters" else "none"),
        graph=GraphConfig(templates=["a photo of a {}."]),
    )
    began = time.perf_counter()
    model = CapNet(backbone, names, config).train()
    build_s = time.perf_counter() - began
    rng = np.random.default_rng(0)
    labels = (rng.random((max(batch, 64), count)) < 2.0 / count).astype(np.float32)
    labels[np.arange(len(labels)), rng.integers(0, count, len(labels))] = 1
    class_freq = np.maximum(labels.sum(0).astype(np.int64), 1)
    criterion = loss_from_config(LossConfig(), class_freq, len(labels)).to(device)
    optimizer = build_optimizer(model, TrainConfig())
    targets = torch.as_tensor(labels[:batch], device=device)
    if mode == "adapters":
        size = image_size(model.clip.visual)
        inputs = torch.randn(batch, 3, size, size, device=device)
    else:
        inputs = torch.randn(batch, model.text_features.shape[1], device=device)
    features = mode != "adapters"

    def step(classes=None, small=False):
        x, y = (inputs[:2], targets[:2]) if small else (inputs, targets)
        return instrumented_step(
            model, criterion, optimizer, x, y, device, 1.0, features=features, classes=classes
        )

    def timed_steps(repeats: int, sampled: bool) -> dict:
        parts = []
        with PeakMemory(device) as peak:
            for _ in range(repeats):
                began = time.perf_counter()
                times = step(sample_classes(targets, per_step) if sampled else None)
                times["step"] = time.perf_counter() - began
                parts.append(times)
        best = min(parts, key=lambda p: p["step"])
        return {**{f"t:{k}": v for k, v in best.items()}, **peak.result}

    heavy = count > 200 or mode == "adapters"
    # Warm-up: a full step where that is cheap, else one over a few classes and two images.
    step(torch.arange(min(count, 16)) if heavy else None, small=heavy)
    common = {
        **payload,
        "build_s": build_s,
        "rss_loaded_mb": rss_mb(),
        "prompt_tokens": int(model.prompts.eot.max()) + 1,
    }
    repeats = 1 if heavy or payload["quick"] else 2
    base = {**common, "per_step": None, "chunk": None, "bank_refresh_s": None}
    rows = [{**base, **timed_steps(repeats, False)}]
    if payload.get("chunk"):
        model.prompts.class_chunk = payload["chunk"]  # what PromptConfig(class_chunk=...) sets
        rows.append({**base, "chunk": payload["chunk"], **timed_steps(repeats, False)})
        model.prompts.class_chunk = None
    if per_step:
        # The option for large label sets: the bank refresh runs once per epoch, then K prompts per step.
        began = time.perf_counter()
        model.refresh_feature_bank()
        refresh_s = time.perf_counter() - began
        rows.append({**base, "per_step": per_step, "bank_refresh_s": refresh_s, **timed_steps(repeats, True)})
    return rows


# (step, classes, K, chunk): one process each; after the all-classes step it also runs the step with
# PromptConfig.class_chunk=chunk, then with TrainConfig.classes_per_step=K (each where given).
CONFIGS_FULL = [
    ("cached", 20, None, None),
    ("cached", 80, None, None),
    ("cached", 81, None, None),
    ("adapters", 1000, 100, 100),
]
CONFIGS_QUICK = [("cached", 5, None, None), ("cached", 20, None, None), ("adapters", 20, 4, 8)]


def step_label(row: dict) -> str:
    if row["per_step"]:
        return f"{row['mode']}, classes_per_step={row['per_step']}"
    if row.get("chunk"):
        return f"{row['mode']}, class_chunk={row['chunk']}"
    return row["mode"]


def run(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="images (or cached features) per step")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--in-process", action="store_true", help="no worker processes (quick default)")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps({"rows": measure(json.loads(args.worker))}), flush=True)
        return {}
    device = setup(args)
    result = new_result("classes", args, device)
    model = model_names(args)[0]  # ViT-B-16 (capnet-tiny with --quick)
    in_process = args.in_process or args.quick
    rows = []
    for mode, count, per_step, chunk in CONFIGS_QUICK if args.quick else CONFIGS_FULL:
        payload = dict(
            model=model,
            classes=count,
            mode=mode,
            per_step=per_step,
            chunk=chunk,
            batch=4 if args.quick else args.batch,
            device=str(device),
            threads=args.threads,
            quick=args.quick,
        )
        got = measure(payload) if in_process else run_worker(Path(__file__), payload)["rows"]
        rows += got
        for r in got:
            print(f"  {step_label(r)}, {count} classes: step {r['t:step']:.2f} s", flush=True)
    table = []
    for r in rows:
        table.append(
            {
                "classes": r["classes"],
                "step": step_label(r),
                "batch": r["batch"],
                "prompt tokens": r["prompt_tokens"],
                "text tower s": r["t:text tower (prompts)"],
                "GCN s": r["t:GCN"],
                "image tower s": r["t:image tower"] if r["mode"] == "adapters" else None,
                "whole step s": r["t:step"],
                "bank refresh s (per epoch)": r["bank_refresh_s"],
                "peak RSS MiB": r["peak_rss_mb"],
                "step's increase MiB": r["peak_rss_increase_mb"],
                "peak CUDA MiB": r["peak_cuda_mb"],
                "model build s": r["build_s"],
            }
        )
    result["tables"][
        f"Training step against the number of classes ({model}, one process per group of rows)"
    ] = table

    def find(mode: str, count: int) -> dict | None:
        for r in rows:
            if (r["mode"], r["classes"], r["per_step"], r.get("chunk")) == (mode, count, None, None):
                return r
        return None

    base = find("cached", 20) or rows[0]
    for r in rows:
        if r is base or r["per_step"] or r.get("chunk"):
            continue
        key = f"text_tower_cost_vs_20[{r['mode']},{r['classes']}]"
        result["ratios"][key] = r["t:text tower (prompts)"] / base["t:text tower (prompts)"]
    sampled = next((r for r in rows if r["per_step"]), None)
    full = find(sampled["mode"], sampled["classes"]) if sampled else None
    if sampled and full:
        key = f"text_tower_sampled_vs_all[{sampled['classes']}]"
        result["ratios"][key] = sampled["t:text tower (prompts)"] / full["t:text tower (prompts)"]
    chunked = next((r for r in rows if r.get("chunk")), None)
    full = find(chunked["mode"], chunked["classes"]) if chunked else None
    if chunked and full:
        key = f"text_tower_chunked_vs_all[{chunked['classes']}]"
        result["ratios"][key] = chunked["t:text tower (prompts)"] / full["t:text tower (prompts)"]
        key = f"step_memory_chunked_vs_all[{chunked['classes']}]"
        result["ratios"][key] = max(chunked["peak_rss_increase_mb"], 1.0) / max(
            full["peak_rss_increase_mb"], 1.0
        )
    tuned = [r for r in rows if r["mode"] == "adapters" and not r["per_step"] and not r.get("chunk")]
    biggest = max(tuned, key=lambda r: r["classes"], default=None)
    if biggest is not None:
        gb = biggest["peak_rss_mb"] / 1024
        result["ratios"][f"peak_rss_gb[adapters,{biggest['classes']}]"] = gb
        if device.type == "cpu":
            label = f"peak RSS GB, {biggest['classes']} classes, batch {biggest['batch']}"
            add_target(result, label, gb, "<=", 24)
    result["notes"].append(
        f"machine memory {memory_total_gb()} GB; the text tower is the same for ViT-B-16 and RN50 "
        "(12 layers, width 512), so only one backbone is measured here"
    )
    result["notes"].append(
        "class_chunk and classes_per_step rows run after the all-classes step in the same process (the "
        "step's increase is measured from what that process held then)"
    )
    return finish(result, args)


if __name__ == "__main__":
    run()
