"""The ablation's reference rows: a linear probe on the frozen image features, trained on Synth-LT.

A probe sees exactly what CAPNET's frozen-tower rows see (the tower's image features of the same
training images) and nothing of the text tower, so it tells a reader how much of a row's mAP the image
features alone allow with the same data, loss and validation protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from capnet.backbone import Backbone, image_size
from capnet.data import Records
from capnet.metrics import lt_map
from capnet.world.pretrain import scene_tensor

PROBE_LRS = (0.01, 0.1)  # chosen on validation, as CAPNET's learning rate is


@torch.no_grad()
def record_features(backbone: Backbone, records: Records, batch_size: int = 256) -> np.ndarray:
    """Normalised frozen image features (N, D) of the records' images, as the feature cache computes them."""
    visual = backbone.model.visual
    out = []
    for start in range(0, len(records.paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in records.paths[start : start + batch_size]]
        x = scene_tensor(images, visual.image_mean, visual.image_std, image_size(visual))
        out.append(F.normalize(backbone.model.encode_image(x.to(backbone.device)).float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def _val_map(head: nn.Linear, x: torch.Tensor, y: np.ndarray, class_freq: np.ndarray) -> float:
    with torch.no_grad():
        return float(lt_map(head(x).numpy(), y, class_freq)["total"])


def train_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    criterion: nn.Module,
    class_freq: np.ndarray,
    *,
    epochs: int = 30,
    lr: float = 0.01,
    batch_size: int = 32,
    seed: int = 0,
) -> tuple[nn.Linear, dict[str, Any]]:
    """AdamW on a linear layer over the features; the best validation epoch is kept (ties: the earlier)."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(np.asarray(train[1], dtype=np.float32))
    val_x = torch.from_numpy(val[0])
    head = nn.Linear(x.shape[1], y.shape[1])
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = criterion(head(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = _val_map(head, val_x, val[1], class_freq)
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head, {"lr": lr, "epoch": best_epoch, "epochs": epochs, "val_total": best}


def select_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    criterion: nn.Module,
    class_freq: np.ndarray,
    *,
    lrs: Sequence[float] = PROBE_LRS,
    seed: int = 0,
    **options: Any,
) -> tuple[nn.Linear, dict[str, Any]]:
    """The probe whose learning rate has the best validation mAP."""
    runs = [train_probe(train, val, criterion, class_freq, lr=lr, seed=seed, **options) for lr in lrs]
    head, info = max(runs, key=lambda run: run[1]["val_total"])
    return head, {**info, "val_by_lr": {str(r[1]["lr"]): r[1]["val_total"] for r in runs}}
