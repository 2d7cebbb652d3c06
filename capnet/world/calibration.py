"""The world's calibration statistics: how close zero-shot comes to what the frozen features allow.

They involve no CAPNET training, so the world may be tuned on them (and only on them) before it is frozen:

- zero-shot total mAP on a natural-distribution test set (scenes as the world draws them, never balanced);
- a linear probe on frozen image features (one-vs-rest logistic regression trained on plentiful
  class-balanced scenes, its C chosen on a held-out part of them), scored on the same test set;
- zero-shot AP of the classes pretraining captions seldom name against those they name most often;
- how many classes zero-shot already ranks almost perfectly (AP >= 0.98).

    python -m capnet.world.calibration --weights checkpoints/capnet-synth.safetensors --out calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier

from capnet.backbone import Backbone, image_size
from capnet.metrics import lt_map
from capnet.world.pretrain import (
    DEFAULT_WEIGHTS,
    concept_probs,
    load_synth_backbone,
    scene_tensor,
    zero_shot_map,
)
from capnet.world.scenes import NATURAL_SPEC, SCENE_CLASSES, SceneSpec, natural_probs, scenes

# Streams of their own, used by nothing else (not pretraining, not Synth-LT).
TEST_SEED = 31_000  # natural-distribution test scenes of world 0
PROBE_SEED = 32_000  # class-balanced scenes the probe is trained on
NAMING_SEED = 33_000  # pretraining-distribution scenes whose captions are counted
PROBE_CS = (0.01, 0.1, 1.0, 10.0, 100.0)
AP_CEILING = 0.98


@torch.no_grad()
def image_features(
    backbone: Backbone,
    n: int,
    seed: int,
    *,
    class_probs: Sequence[float] | None = None,
    spec: SceneSpec | None = None,
    batch_size: int = 250,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised frozen image features (n, D) and labels (n, C) of scenes 0 .. n - 1 of stream ``seed``."""
    visual = backbone.model.visual
    feats, labels = [], []
    for start in range(0, n, batch_size):
        drawn = scenes(min(batch_size, n - start), seed, class_probs=class_probs, spec=spec, start=start)
        x = scene_tensor([s.image for s in drawn], visual.image_mean, visual.image_std, image_size(visual))
        f = backbone.model.encode_image(x.to(backbone.device)).float()
        feats.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        labels.append(np.stack([s.labels for s in drawn]))
    return np.concatenate(feats), np.concatenate(labels)


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, held_fraction: float = 0.2, cs: Sequence[float] = PROBE_CS
) -> tuple[OneVsRestClassifier, dict[str, float]]:
    """One-vs-rest logistic regression; C is the one with the best macro AP on a held-out part of the
    training scenes, then the probe is refitted on all of them."""
    n_held = int(round(held_fraction * len(train_x)))
    fit_x, fit_y, held_x, held_y = train_x[n_held:], train_y[n_held:], train_x[:n_held], train_y[:n_held]

    def probe(c: float) -> OneVsRestClassifier:
        return OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000))

    held_ap = {}
    for c in cs:
        scores = probe(c).fit(fit_x, fit_y).decision_function(held_x)
        held_ap[str(c)] = float(average_precision_score(held_y, scores, average="macro"))
    best = max(cs, key=lambda c: held_ap[str(c)])
    return probe(best).fit(train_x, train_y), {"C": best, "held_out_map": held_ap}


def naming_rates(n: int = 5000, seed: int = NAMING_SEED) -> np.ndarray:
    """Per class: the fraction of its objects in pretraining scenes that the caption names (any wording)."""
    present, named = np.zeros(len(SCENE_CLASSES)), np.zeros(len(SCENE_CLASSES))
    for scene in scenes(n, seed, class_probs=concept_probs()):
        present += scene.labels
        named[list(scene.named)] += 1
    return named / np.maximum(present, 1)


def calibration_stats(
    backbone: Backbone, *, n_test: int = 2000, n_probe: int = 10_000, n_naming: int = 5000
) -> dict[str, Any]:
    """Every calibration statistic of ``backbone`` against the targets set before any CAPNET number."""
    probs = natural_probs(0)
    zero = zero_shot_map(backbone, n=n_test, seed=TEST_SEED, class_probs=probs, spec=NATURAL_SPEC)
    test_x, test_y = image_features(backbone, n_test, TEST_SEED, class_probs=probs, spec=NATURAL_SPEC)
    train_x, train_y = image_features(backbone, n_probe, PROBE_SEED)
    probe, choice = linear_probe(train_x, train_y)
    probe_map = lt_map(probe.decision_function(test_x), test_y, np.full(len(SCENE_CLASSES), 100))
    rates = naming_rates(n_naming)
    order = np.argsort(rates)
    quarter = len(SCENE_CLASSES) // 4
    zs_ap = np.asarray(zero["per_class"], dtype=np.float64)
    seldom, salient = order[:quarter], order[-quarter:]
    stats = {
        "test": {"seed": TEST_SEED, "n": n_test, "distribution": "natural (world 0)"},
        "zero_shot_map": float(zero["total"]),
        "probe_map": float(probe_map["total"]),
        "gap": float(probe_map["total"] - zero["total"]),
        "probe": {"seed": PROBE_SEED, "n": n_probe, **choice},
        "naming_rate": dict(zip(SCENE_CLASSES, rates.round(4).tolist())),
        "zero_shot_ap": dict(zip(SCENE_CLASSES, zs_ap.round(4).tolist())),
        "probe_ap": dict(zip(SCENE_CLASSES, np.asarray(probe_map["per_class"]).round(4).tolist())),
        "seldom_named": {
            "classes": [SCENE_CLASSES[c] for c in seldom],
            "zero_shot_ap": float(zs_ap[seldom].mean()),
        },
        "most_named": {
            "classes": [SCENE_CLASSES[c] for c in salient],
            "zero_shot_ap": float(zs_ap[salient].mean()),
        },
        "classes_at_ceiling": int((zs_ap >= AP_CEILING).sum()),
    }
    stats["targets"] = {
        "gap >= 0.05": stats["gap"] >= 0.05,
        "seldom-named below most-named": stats["seldom_named"]["zero_shot_ap"]
        < stats["most_named"]["zero_shot_ap"],
        "at most a quarter at AP >= 0.98": stats["classes_at_ceiling"] <= len(SCENE_CLASSES) // 4,
    }
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capnet.world.calibration", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--out", type=Path, default=None, help="write the statistics here as JSON")
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-probe", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stats = calibration_stats(load_synth_backbone(args.weights), n_test=args.n_test, n_probe=args.n_probe)
    text = json.dumps(stats, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
