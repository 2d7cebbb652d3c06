"""What zero-shot probabilities are worth: F1 at 0.5 and labels per image, calibrated against raw.

On fresh scenes of the synthetic world (its natural distribution, as `capnet world scenes` writes them
by default, from a seed used nowhere else), the
world's tiny CLIP scores every scene class zero-shot, as ``capnet predict`` does (the default template
ensemble, unless ``--templates scene``). Each row sets the class biases differently:
- ``raw``: no bias, sigmoid(s * cos), what the command line printed before calibration;
- ``world scenes xN``: ``capnet.calibration`` on N reference scenes of the app's calibration stream (seed
  4343), flat prior labels-per-image / classes (2 / 20 = 0.10), and the same with the world's true mean;
- ``skimage photos``: the photos for real CLIP, here out of domain (what a wrong reference set does).
Calibration moves each class's scores by a constant, so per-class AP (mAP) is the same in every row.
Not part of ``run_all.py``: a quality figure of the world's current tiny CLIP, re-measured whenever
that model is replaced.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import finish, new_result, parser, setup  # noqa: E402
from capnet.calibration import (  # noqa: E402
    ReferenceSet,
    calibrate_zero_shot,
    flat_prior,
    reference_features,
    skimage_reference,
    uncalibrated,
)
from capnet.config import GraphConfig, ModelConfig  # noqa: E402
from capnet.metrics import f1_at_threshold, lt_map  # noqa: E402
from capnet.model import CapNet  # noqa: E402
from capnet.world import SCENE_CLASSES, load_synth_backbone, scene_batch  # noqa: E402
from capnet.world.scenes import (  # noqa: E402
    NATURAL_SPEC,
    REFERENCE_SEED,
    SCENE_TEMPLATES,
    natural_probs,
    reference_scenes,
)

TEST_SEED = 15015  # fresh scenes: no other stream uses this seed


@torch.no_grad()
def logits_of(model: CapNet, images: list, batch_size: int = 100) -> np.ndarray:
    transform = model.image_transform()
    out = [
        model.predict_logits(torch.stack([transform(im) for im in images[i : i + batch_size]])).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


def row(name: str, probs: np.ndarray, labels: np.ndarray, describe: str) -> dict:
    f1 = f1_at_threshold(probs, labels, 0.5)
    return {
        "calibration": name,
        "micro_f1": round(f1["micro_f1"], 4),
        "macro_f1": round(f1["macro_f1"], 4),
        "labels_per_image": round(float((probs >= 0.5).sum(1).mean()), 3),
        "true_labels_per_image": round(float(labels.sum(1).mean()), 3),
        "stderr_line": describe,
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="test scenes")
    p.add_argument("--templates", choices=("ensemble", "scene"), default="ensemble")
    p.add_argument("--cache-dir", default=None, help="reference feature cache (default: none, all computed)")
    args = p.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 100)
    device = setup(args)
    result = new_result("calibration", args, device)
    backbone = load_synth_backbone(device=device.type)
    templates = "ensemble" if args.templates == "ensemble" else list(SCENE_TEMPLATES)
    config = ModelConfig(graph=GraphConfig(templates=templates))
    model = CapNet(backbone, SCENE_CLASSES, config, zero_shot=True).eval()

    images, labels, _ = scene_batch(args.n, seed=TEST_SEED, class_probs=natural_probs(0), spec=NATURAL_SPEC)
    true_mean = float(labels.sum(1).mean())
    raw = uncalibrated(model)
    raw_logits = logits_of(model, images)
    rows = [row("raw (no calibration)", 1 / (1 + np.exp(-raw_logits)), labels, raw.describe())]

    world = ReferenceSet.of_images(f"synthetic-world scenes (seed {REFERENCE_SEED})", reference_scenes(256))
    world_feats = reference_features(model, world, cache_dir=args.cache_dir)
    photos = reference_features(model, skimage_reference(), cache_dir=args.cache_dir)
    choices = [
        ("world scenes x64, flat prior", world_feats, 64, None),
        ("world scenes x256, flat prior", world_feats, 256, None),
        ("world scenes x256, prior = true mean / C", world_feats, 256, true_mean / len(SCENE_CLASSES)),
        ("skimage photos (out of domain), flat prior", photos, None, None),
    ]
    for name, feats, count, prior in choices:
        if count is not None:
            feats = type(feats)(feats.features[:count], feats.name, 0, [], feats.cached)
        calibration = calibrate_zero_shot(model, feats, prior=prior)
        logits = raw_logits + calibration.biases  # zero biases in raw_logits: the same as predicting again
        rows.append(row(name, 1 / (1 + np.exp(-logits)), labels, calibration.describe()))

    title = f"zero-shot on {args.n} fresh natural-distribution world scenes (seed {TEST_SEED}), threshold 0.5"
    result["tables"][title] = rows
    m_ap = lt_map(torch.from_numpy(raw_logits), labels, np.full(len(SCENE_CLASSES), 100))["total"]
    result["notes"] += [
        f"templates: {args.templates}; flat prior {flat_prior(len(SCENE_CLASSES)):.2f}; "
        f"true labels per image {true_mean:.3f}",
        f"mAP {m_ap:.2f} in every row (calibration shifts each class's scores by a constant)",
        "the world's tiny CLIP may be replaced: these figures hold for checkpoints/capnet-synth.safetensors "
        "as of this run",
    ]
    return finish(result, args)


if __name__ == "__main__":
    main()
