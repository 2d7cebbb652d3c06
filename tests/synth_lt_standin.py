"""A stand-in for `checkpoints/capnet-synth-lt.safetensors`, built by the tests that serve it.

It is what the shipped file is: a CapNet on the shipped tiny CLIP with the text graph and GCN, saved with
`claimed_map`, `class_freq`, `train_cooccurrence` and `synth_lt`. Its tensors are perturbed instead of
trained (training would cost minutes); the weights file it was built on is deleted afterwards, as on a
fresh clone, leaving only the copy beside the checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from app.models import SYNTH_LT_NAME
from capnet.backbone import load_backbone
from capnet.checkpoint import save_checkpoint
from capnet.config import ModelConfig, from_dict
from capnet.model import CapNet
from capnet.world.pretrain import DEFAULT_WEIGHTS, MODEL_NAME
from capnet.world.scenes import NATURAL_SPEC, SCENE_CLASSES, SCENE_TEMPLATES, natural_probs, scene_batch

CLAIMED = {"total": 0.8123, "head": 0.9012, "medium": 0.7834, "tail": 0.6549}


def build_standin(root: Path) -> tuple[Path, CapNet, np.ndarray]:
    """(folder holding the checkpoint and its weights, the model as saved, its training labels)."""
    trainer_copy = root / "trainer" / "synth_final.safetensors"
    trainer_copy.parent.mkdir()
    shutil.copy(DEFAULT_WEIGHTS, trainer_copy)
    backbone = load_backbone(name=MODEL_NAME, pretrained=None, weights=str(trainer_copy), device="cpu")
    config = from_dict(ModelConfig, {"prompt": {"n_ctx": 4}, "graph": {"templates": list(SCENE_TEMPLATES)}})
    torch.manual_seed(0)
    model = CapNet(backbone, SCENE_CLASSES, config).eval()
    assert model.gcn is not None and model.config.graph.source == "text"
    with torch.no_grad():
        model.class_bias.copy_(torch.linspace(-3.0, 2.0, len(SCENE_CLASSES)))
        for param in [*model.gcn.parameters(), *model.prompts.parameters()]:
            if param.requires_grad:  # the prompts hold the frozen token embedding too
                param.add_(0.2 * torch.randn_like(param))
    _, labels, _ = scene_batch(60, seed=31337, class_probs=natural_probs(0), spec=NATURAL_SPEC)
    y = labels.astype(np.int64)
    extra = {
        "claimed_map": CLAIMED,
        "class_freq": y.sum(0).tolist(),
        "train_cooccurrence": (y.T @ y).tolist(),
        "synth_lt": {  # as capnet.world.ablation.ship_checkpoint writes it
            "world": 0,
            "row": "+ GCN, text-embedding graph",
            "seed": 0,
            "recipe": "in-vocabulary init, lr 5e-4",
            "kept": {"epoch": 3, "reason": "best validation mAP"},
            "test_size": 1000,
        },
    }
    folder = root / "checkpoints"
    save_checkpoint(model, folder / SYNTH_LT_NAME, extra)
    shutil.copy(DEFAULT_WEIGHTS, folder / "capnet-synth.safetensors")
    trainer_copy.unlink()  # a fresh clone has only the shipped copy beside the checkpoint
    return folder, model, labels
