"""Evaluation: scores over a dataset (with and without test-time ensembling) and the report files.

The report is what the app's dashboard reads: a JSON with every figure, a per-class CSV and a per-image
CSV of probabilities and true labels (for the failure gallery).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from capnet._version import __version__
from capnet.config import EvalConfig
from capnet.data import ImageDataset, Records
from capnet.metrics import f1_at_threshold, lt_map
from capnet.model import CapNet

REPORT_JSON = "report.json"
PER_CLASS_CSV = "per_class.csv"
SCORES_CSV = "scores.csv"


@torch.no_grad()
def score_records(
    model: CapNet,
    records: Records,
    *,
    tta: bool = False,
    flips: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
) -> np.ndarray:
    """Logits (N, C) in float32, batched through DataLoader workers."""
    model.eval()
    loader = DataLoader(
        ImageDataset(records, model.image_transform(tta=tta, flips=flips)),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=model.device.type == "cuda",
    )
    desc = "scoring (TTA)" if tta else "scoring"
    out = [model.predict_logits(x).cpu() for x, _, _ in tqdm(loader, desc=desc, unit="batch", disable=None)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_classes), np.float32)


def finite(value: Any) -> Any:
    """JSON has no NaN: a group without classes is reported as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def summarise(logits: np.ndarray, targets: np.ndarray, class_freq: np.ndarray, threshold: float) -> dict:
    result = lt_map(logits, targets, class_freq)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    f1 = f1_at_threshold(probs, targets, threshold)
    summary = {k: finite(result[k]) for k in ("total", "head", "medium", "tail")}
    summary.update({k: finite(v) for k, v in f1.items()})
    return {
        "summary": summary,
        "per_class": result["per_class"],
        "groups": result["groups"],
        "missing": result["missing"],
        "group_sizes": result["group_sizes"],
    }


def evaluate(
    model: CapNet,
    records: Records,
    class_freq: np.ndarray,
    cfg: EvalConfig,
    *,
    num_workers: int = 0,
    name: str = "eval",
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The report dict and the per-image logits of the primary setting (TTA when enabled)."""
    if list(records.class_names) != list(model.class_names):
        only_data = [c for c in records.class_names if c not in model.class_names]
        only_model = [c for c in model.class_names if c not in records.class_names]
        detail = (
            f"only in the data: {only_data}, only in the model: {only_model}"
            if only_data or only_model
            else f"same names, other order; the model's: {list(model.class_names)}"
        )
        raise ValueError(f"the dataset's classes differ from the model's ({detail}); set data.class_names")
    began = time.time()
    runs = {"single": score_records(model, records, batch_size=cfg.batch_size, num_workers=num_workers)}
    if cfg.tta:
        runs["tta"] = score_records(
            model, records, tta=True, flips=cfg.flips, batch_size=cfg.batch_size, num_workers=num_workers
        )
    results = {k: summarise(v, records.labels, class_freq, cfg.threshold) for k, v in runs.items()}
    base = results["single"]
    per_class = []
    for c, cls in enumerate(model.class_names):
        row = {
            "class": cls,
            "train_count": int(class_freq[c]),
            "group": base["groups"][c],
            "test_positives": int(records.labels[:, c].sum()),
        }
        for key, res in results.items():
            row[f"ap_{key}"] = finite(float(res["per_class"][c]))
        per_class.append(row)
    report = {
        "name": name,
        "capnet_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.time() - began, 1),
        "backbone": {"name": model.config.backbone.name, "pretrained": model.config.backbone.pretrained},
        "zero_shot": model.zero_shot,
        "num_images": len(records),
        "class_names": list(model.class_names),
        "threshold": cfg.threshold,
        "eval_config": asdict(cfg),
        "results": {k: v["summary"] for k, v in results.items()},
        "group_sizes": base["group_sizes"],
        "missing_classes": [model.class_names[c] for c in base["missing"]],
        "per_class": per_class,
        **(extra or {}),
    }
    return report, runs["tta" if cfg.tta else "single"]


def write_report(report: dict[str, Any], logits: np.ndarray, records: Records, out_dir: str | Path) -> Path:
    """report.json, per_class.csv and scores.csv (probabilities and true labels per image)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1))
    pd.DataFrame(report["per_class"]).to_csv(out / PER_CLASS_CSV, index=False)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    frame = pd.DataFrame({"image_id": records.image_ids, "path": [str(p) for p in records.paths]})
    names = report["class_names"]
    scores = pd.DataFrame(probs, columns=[f"p:{n}" for n in names])
    truth = pd.DataFrame(records.labels.astype(int), columns=[f"y:{n}" for n in names])
    # Ten significant digits: probabilities near 0 or 1 must not collapse into ties (ties change AP).
    pd.concat([frame, scores, truth], axis=1).to_csv(out / SCORES_CSV, index=False, float_format="%.10g")
    return out / REPORT_JSON
