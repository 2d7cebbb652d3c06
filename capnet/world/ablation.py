"""Synth-LT and the ablation table: what each CAPNET component adds, measured in the synthetic world.

Synth-LT: a pool of captioned scenes (capnet.world.scenes) cut to a long tail by the same Pareto builder as
VOC-LT, and a test set of fresh scenes from the same natural distribution (as VOC2007 test is). The
ablation trains each configuration with the capnet engine on the shipped tiny CLIP
(checkpoints/capnet-synth.safetensors) for several seeds and reports mean and standard deviation of
total / head / medium / tail mAP.

    python -m capnet.world.ablation --out runs/ablation        (about 15 minutes on two CPU cores)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capnet.backbone import load_backbone
from capnet.config import RunConfig, from_dict
from capnet.data import Records, read_csv
from capnet.data.longtail import build_longtail, longtail_summary
from capnet.engine.evaluate import evaluate, write_report
from capnet.engine.trainer import Trainer, split_validation
from capnet.model import CapNet
from capnet.world.pretrain import DEFAULT_WEIGHTS
from capnet.world.scenes import NATURAL_SPEC, SCENE_CLASSES, SCENE_TEMPLATES, natural_probs, scene_batch

GROUPS = ("total", "head", "medium", "tail")

# Each row adds one component to the row before it, as in the paper's ablation; the co-occurrence row
# swaps the graph for ML-GCN's, and the TTA row evaluates the text-graph model with five-crop views.
ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("zero-shot", {"zero_shot": True}),
    ("prompts + BCE", {"loss": {"name": "bce"}, "model": {"gcn": {"enabled": False}}}),
    ("+ DB-focal", {"model": {"gcn": {"enabled": False}}}),
    ("+ class-aware re-weighting", {"loss": {"class_weight_power": 0.5},
                                    "model": {"gcn": {"enabled": False}}}),
    ("+ GCN, text-embedding graph", {"loss": {"class_weight_power": 0.5}}),
    ("  GCN, co-occurrence graph", {"loss": {"class_weight_power": 0.5},
                                    "model": {"graph": {"source": "cooccurrence", "sparsify": "threshold",
                                                        "threshold": 0.4}}}),
    ("+ test-time ensembling", {"loss": {"class_weight_power": 0.5}, "eval": {"tta": True}}),
    ("+ adapters", {"loss": {"class_weight_power": 0.5}, "eval": {"tta": True},
                    "model": {"adapter": {"kind": "adaptformer"}}}),
]  # fmt: skip


def _write_split(root: Path, images, labels: np.ndarray) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,labels"]
    for i, (image, row) in enumerate(zip(images, labels)):
        path = f"images/{i:05d}.png"
        image.save(root / path)
        lines.append(f"{path},{';'.join(SCENE_CLASSES[c] for c in np.flatnonzero(row))}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def pool_probs(seed: int) -> np.ndarray:
    """World ``seed``'s natural class frequencies (Zipf in a seeded order), which the pool is drawn from."""
    return natural_probs(seed)


def build_synth_lt(
    root: Path,
    *,
    pool_size: int = 6000,
    max_per_class: int = 600,
    min_per_class: int = 4,
    test_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write Synth-LT (train: Pareto long tail of a scene pool; test: the pool's natural distribution)."""
    pool_images, pool_labels, _ = scene_batch(
        pool_size, seed=10_000 + seed, class_probs=pool_probs(seed), spec=NATURAL_SPEC
    )
    selected = build_longtail(pool_labels, max_per_class, min_per_class=min_per_class, seed=seed)
    _write_split(root / "train", [pool_images[i] for i in selected], pool_labels[selected])
    # The test set: fresh scenes of the same natural distribution as the pool, never class-balanced.
    test_images, test_labels, _ = scene_batch(
        test_size, seed=20_000 + seed, class_probs=pool_probs(seed), spec=NATURAL_SPEC
    )
    _write_split(root / "test", test_images, test_labels)
    summary = longtail_summary(pool_labels[selected], list(SCENE_CLASSES))
    summary.update(
        {
            "pool_size": pool_size,
            "max_per_class": max_per_class,
            "min_per_class": min_per_class,
            "test_size": test_size,
            "seed": seed,
        }
    )
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def base_config(out: Path, weights: Path, epochs: int) -> dict[str, Any]:
    return {
        "name": "synth-lt",
        "model": {"backbone": {"name": "capnet-synth", "pretrained": None, "weights": str(weights),
                               "device": "cpu"},
                  "prompt": {"n_ctx": 4}, "graph": {"templates": list(SCENE_TEMPLATES)},
                  "adapter": {"kind": "none"}},
        "data": {"num_workers": 0, "val_fraction": 0.1},
        "loss": {"name": "dbfocal", "mu": 0.3, "neg_scale": 5.0},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": "adamw", "lr": 0.002,
                  "warmup_epochs": 1.0, "cache_dir": str(out / "cache"), "out_dir": str(out / "runs")},
        "eval": {"tta": False, "batch_size": 128},
    }  # fmt: skip


def run_one(cfg: RunConfig, zero_shot: bool, train: Records, test: Records, out_dir: Path) -> dict[str, Any]:
    torch.manual_seed(cfg.train.seed)
    backbone = load_backbone(cfg.model.backbone)
    if zero_shot:
        model = CapNet(backbone, train.class_names, cfg.model, zero_shot=True)
    else:
        fit, val = split_validation(train, cfg.data.val_fraction, cfg.train.seed)
        model = CapNet(backbone, train.class_names, cfg.model, train_labels=fit.labels)
        Trainer(cfg, model, fit, val, out_dir).fit()
    report, logits = evaluate(model, test, train.class_freq, cfg.eval, name=out_dir.name)
    return {"report": report, "logits": logits}


def run_ablation(
    out: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 15,
    weights: Path = DEFAULT_WEIGHTS,
    rows: Sequence[str] | None = None,
    data_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every configuration (or those named in ``rows``) for every seed; the first seed's reports are
    written in full for the dashboard. ``data_options`` go to build_synth_lt (smaller worlds for tests)."""
    data = out / "synth-lt"
    if not (data / "train" / "labels.csv").is_file():
        build_synth_lt(data, **(data_options or {}))
    train = read_csv(data / "train" / "labels.csv", data / "train", list(SCENE_CLASSES))
    test = read_csv(data / "test" / "labels.csv", data / "test", list(SCENE_CLASSES))
    base = base_config(out, weights, epochs)
    table: dict[str, Any] = {}
    for name, change in ABLATIONS:
        if rows is not None and name not in rows:
            continue
        change = dict(change)
        zero_shot = change.pop("zero_shot", False)
        results: dict[str, list[float]] = {g: [] for g in GROUPS}
        for seed in seeds if not zero_shot else seeds[:1]:
            cfg = from_dict(
                RunConfig, _merge(base, {**change, "train": {**change.get("train", {}), "seed": seed}})
            )
            slug = name.strip("+ ").replace(" ", "-").replace(",", "")
            run_dir = out / "runs" / f"{slug}-seed{seed}"
            result = run_one(cfg, zero_shot, train, test, run_dir)
            setting = "tta" if cfg.eval.tta else "single"
            for g in GROUPS:
                value = result["report"]["results"][setting][g]
                results[g].append(float("nan") if value is None else value)
            if seed == seeds[0]:
                report = result["report"]
                report["name"] = name.strip()
                write_report(report, result["logits"], test, out / "reports" / slug)
        table[name] = {
            g: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v} for g, v in results.items()
        }
        print(
            f"{name:<32}" + "  ".join(f"{g} {100 * table[name][g]['mean']:.1f}" for g in GROUPS), flush=True
        )
    summary = json.loads((data / "summary.json").read_text())
    payload = {
        "seeds": list(seeds),
        "epochs": epochs,
        "weights": str(weights),
        "synth_lt": summary,
        "table": table,
    }
    (out / "ablation.json").write_text(json.dumps(payload, indent=1))
    (out / "ablation.md").write_text(markdown_table(payload))
    return payload


def markdown_table(payload: dict[str, Any]) -> str:
    s = payload["synth_lt"]
    lines = [
        f"Synth-LT: {s['num_images']} training images (groups {s['group_sizes']}), "
        f"{s['test_size']} natural-distribution test scenes; {len(payload['seeds'])} seeds, "
        f"{payload['epochs']} epochs.",
        "",
        "| configuration | total | head | medium | tail |",
        "|---|---|---|---|---|",
    ]
    for name, row in payload["table"].items():
        cells = [f"{100 * row[g]['mean']:.1f} ± {100 * row[g]['std']:.1f}" for g in GROUPS]
        lines.append(f"| {name.strip()} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capnet.world.ablation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    payload = run_ablation(Path(args.out), seeds=args.seeds, epochs=args.epochs, weights=Path(args.weights))
    print(markdown_table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
