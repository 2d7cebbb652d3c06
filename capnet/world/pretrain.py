"""Pretrains a tiny CLIP (``capnet-synth``) contrastively on captioned synthetic scenes, and measures it.

    python -m capnet.world.pretrain --out checkpoints/capnet-synth.safetensors --minutes 20
    python -m capnet.world.pretrain --out checkpoints/capnet-synth.safetensors --steps 1500  # exact rerun

Training is CLIP's: a symmetric InfoNCE loss between image and caption features with a learnable logit
scale, AdamW with linear warm-up and cosine decay, on scenes generated afresh for every step from
``capnet.world.scenes``, their classes drawn with Zipf frequencies in a fixed order (``concept_probs``)
and their captions alt-text that names some objects in varied words. One change: a caption is also a
positive for every other image in the batch of which it is true (each of its namings fits a class in
that image, ``--positives subset``). With 20 concepts in a batch of 64 a short caption such as "a star."
is true of many images, and CLIP's own loss (``--positives none``) would push all but one of them away
(on the first version of this world it plateaued at zero-shot mAP 0.40). Batch ``b`` holds scenes
``b * B .. b * B + B - 1`` of the training stream, so what the model sees depends only on the seed, the
batch size and the step, never on timing or on the number of data workers.

With ``--minutes`` alone, the run times its first steps, fixes the schedule's length to what fits in the
budget, and records it; ``--steps N`` then reproduces that run exactly (same initialisation, data and
schedule). The weights are written as fp16 safetensors that ``load_backbone(name="capnet-synth",
pretrained=None, weights=PATH)`` loads; the header's metadata holds the steps, seed, settings, command,
loss curve and zero-shot mAP.

``zero_shot_map`` is the yardstick during training: template-ensembled zero-shot CapNet scores on a fixed,
class-balanced set of scenes (seed 12345), scored with ``capnet.metrics.lt_map``; ``capnet.world.calibration``
measures the finished model against a linear probe on natural-distribution scenes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from capnet.backbone import Backbone, image_size, load_backbone
from capnet.checkpoint import save_atomic
from capnet.config import BackboneConfig, GraphConfig, ModelConfig
from capnet.engine.schedule import warmup_cosine
from capnet.metrics import lt_map
from capnet.model import CapNet
from capnet.text import encode_tokens
from capnet.world.scenes import SCENE_CLASSES, SCENE_TEMPLATES, SceneSpec, scene_batch, scenes, zipf_probs

__all__ = [
    "DEFAULT_WEIGHTS",
    "EVAL_SEED",
    "MODEL_NAME",
    "CaptionedScenes",
    "clip_loss",
    "concept_probs",
    "mention_tensor",
    "positive_pairs",
    "contrastive_train",
    "load_synth_backbone",
    "read_pretrain_metadata",
    "save_clip_weights",
    "scene_tensor",
    "zero_shot_map",
]

MODEL_NAME = "capnet-synth"
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "checkpoints" / "capnet-synth.safetensors"
TRAIN_SEED = 0  # the training stream
VAL_SEED = 777  # monitoring during training (never the test set)
EVAL_SEED = 12345  # the fixed, class-balanced test set
METADATA_KEY = "capnet_pretrain"
MAX_LOGIT_SCALE = 100.0
MAX_MENTIONS = 4  # a caption names at most every object of a scene
CONCEPT_ORDER_SEED = 2_718_281  # the pretraining concept order: drawn once, unrelated to Synth-LT's seeds
CONCEPT_EXPONENT = 1.0  # Zipf, the classic exponent of word and concept frequencies


# ---------------------------------------------------------------------------------------------- data


def scene_tensor(
    images: Sequence[Any], mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> torch.Tensor:
    """(N, 3, H, W) normalised floats from PIL images or uint8 arrays of the model's input size.

    Equal to ``view_transform(size, mean, std)`` for images already ``size`` x ``size`` (its resize is
    then the identity); other sizes go through that transform.
    """
    arrays = [np.asarray(im, dtype=np.uint8) for im in images]
    if size is not None and any(a.shape[:2] != (size, size) for a in arrays):
        from capnet.tta import view_transform

        view = view_transform(size, mean, std)
        return torch.stack([view(Image.fromarray(a)) for a in arrays])
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def concept_probs() -> np.ndarray:
    """Pretraining class frequencies: Zipf (exponent ``CONCEPT_EXPONENT``) in an order fixed by its own seed,
    as web concepts are long-tailed; the order was drawn once and never tuned to Synth-LT."""
    return zipf_probs(CONCEPT_ORDER_SEED, CONCEPT_EXPONENT)


def mention_tensor(mentions: Sequence[Sequence[frozenset[int]]], num_classes: int) -> torch.Tensor:
    """(B, MAX_MENTIONS, C) bool: row m of caption b marks the classes its m-th naming is true of; unused
    rows are all true (a naming every scene satisfies)."""
    out = torch.ones(len(mentions), MAX_MENTIONS, num_classes, dtype=torch.bool)
    for b, named in enumerate(mentions):
        for m, classes in enumerate(named):
            out[b, m] = False
            out[b, m, sorted(classes)] = True
    return out


class CaptionedScenes(torch.utils.data.IterableDataset):
    """Batches (uint8 images (B, H, W, 3), caption tokens (B, 77), labels (B, C), mentions (B, M, C)).

    Batch b holds scenes b * batch_size .. (b + 1) * batch_size - 1; with several workers, worker w
    makes the batches b = w mod W and the loader interleaves them back into order. Classes are drawn
    with ``class_probs`` (default: the pretraining concept frequencies, ``concept_probs``).
    """

    def __init__(
        self,
        seed: int,
        batch_size: int,
        tokenizer: Callable,
        *,
        start_batch: int = 0,
        num_batches: int | None = None,
        spec: SceneSpec | None = None,
        class_probs: Sequence[float] | None = None,
    ) -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.start_batch = start_batch
        self.num_batches = num_batches
        self.spec = spec or SceneSpec()
        self.class_probs = concept_probs() if class_probs is None else class_probs

    def batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        drawn = scenes(
            self.batch_size,
            self.seed,
            class_probs=self.class_probs,
            spec=self.spec,
            start=b * self.batch_size,
        )
        pixels = torch.from_numpy(np.stack([np.asarray(s.image, dtype=np.uint8) for s in drawn]))
        labels = torch.from_numpy(np.stack([s.labels for s in drawn]))
        mentions = mention_tensor([s.mentions for s in drawn], len(SCENE_CLASSES))
        return pixels, self.tokenizer([s.caption for s in drawn]), labels, mentions

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        b = self.start_batch + wid
        end = None if self.num_batches is None else self.start_batch + self.num_batches
        while end is None or b < end:
            yield self.batch(b)
            b += workers


# ---------------------------------------------------------------------------------------------- loss


POSITIVES = ("subset", "equal", "none")


def positive_pairs(
    labels: torch.Tensor, positives: str = "subset", mentions: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, B) bool: P[i, j] when caption j counts as a positive for image i.

    "none": only its own caption (CLIP). "equal": also captions of scenes with exactly the same classes.
    "subset": also every caption that is true of image i: each of its namings (``mentions`` (B, M, C),
    a set of classes per naming: "a star" is true of a red or a yellow star) matches a class image i
    holds. Without ``mentions`` a caption names exactly its own scene's classes. The diagonal is always
    positive.
    """
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
    n = labels.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    if positives == "none":
        return eye
    y = labels.float()
    if positives == "equal":
        return eye | (torch.cdist(y, y, p=1) < 0.5)
    if mentions is None:
        missing = (1.0 - y) @ y.T  # [i, j]: classes named by caption j that image i lacks
        return eye | (missing < 0.5)
    hits = torch.einsum("ic,jmc->ijm", y, mentions.float())  # [i, j, m]: image i's classes naming m fits
    return eye | (hits > 0.5).all(dim=2)


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    positives: str = "subset",
    mentions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over normalised features with a learnable logit scale (the CLIP loss).

    Without ``labels`` (or with ``positives="none"``) each image's only positive is its own caption, as
    in CLIP. With labels, the target of each row is spread evenly over ``positive_pairs``: in a world of
    20 classes a batch of 64 holds several scenes of which a caption such as "a red star." is true, and
    CLIP's loss would push all but one of them away from it. With "subset" positives the caption-to-image
    direction becomes, for one-object captions, a ranking of the batch's images by that class: the
    quantity zero-shot multi-label recognition scores. ``mentions`` say what each caption's namings are
    true of (``positive_pairs``).
    """
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    n = logits.shape[0]
    if labels is None or positives == "none":
        target = torch.arange(n, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    pos = positive_pairs(labels, positives, mentions).float()
    to_text = pos / pos.sum(dim=1, keepdim=True)  # image i -> its true captions
    to_image = pos.T / pos.T.sum(dim=1, keepdim=True)  # caption j -> the images it is true of
    loss_i = -(to_text * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(to_image * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def _param_groups(clip: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on weight matrices only: not on embeddings (most token rows never see a gradient), norms,
    biases, the class token or the logit scale."""
    decay, no_decay = [], []
    for name, p in clip.named_parameters():
        if not p.requires_grad:
            continue
        embedding = "embedding" in name or name.endswith("class_embedding")
        (decay if p.dim() >= 2 and not embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------- training


class _Schedule:
    """The learning-rate schedule, sized from ``steps`` or, with ``steps=None``, from the speed of the
    first steps and the time budget. The timed steps lie inside the warm-up, whose rates do not depend on
    the schedule's length, so a run sized this way equals the run given that length as ``steps``."""

    def __init__(self, lr: float, steps: int | None, warmup: int, budget: float | None) -> None:
        self.lr, self.steps, self.budget = lr, steps, budget
        self.warm = max(1, min(warmup, steps) if steps is not None else warmup)
        self.factor = warmup_cosine(steps, self.warm) if steps is not None else None
        self.probe = (min(5, self.warm // 3), max(1, self.warm))
        self.probe_start = 0.0

    def rate(self, step: int, elapsed: float) -> float:
        if self.steps is None:
            if step == self.probe[0]:
                self.probe_start = elapsed
            if step == self.probe[1]:
                per_step = (elapsed - self.probe_start) / (self.probe[1] - self.probe[0])
                self.steps = max(step + 1, int(0.96 * (self.budget - elapsed) / per_step) + step)
                self.factor = warmup_cosine(self.steps, self.warm)
        return self.lr * (self.factor(step) if self.factor is not None else (step + 1) / self.warm)


class _LossWindow:
    """Mean loss over windows of ``every`` steps: the run's loss curve."""

    def __init__(self, every: int = 25) -> None:
        self.every, self.values, self.history = every, [], []

    def add(self, step: int, loss: float, lr: float, seconds: float, *, final: bool = False) -> None:
        if not final:
            self.values.append(loss)
        if self.values and (final or step % self.every == 0):
            entry = {
                "step": step,
                "loss": float(np.mean(self.values)),
                "lr": lr,
                "seconds": round(seconds, 1),
            }
            self.history.append(entry)
            self.values = []


def _step(
    clip: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[torch.Tensor],
    positives: str,
    grad_clip: float,
) -> float:
    """One contrastive step on a batch from ``CaptionedScenes``; returns its loss."""
    pixels, tokens, labels, mentions = batch
    device = next(clip.parameters()).device
    visual = clip.visual
    x = scene_tensor(pixels.numpy(), visual.image_mean, visual.image_std, image_size(visual)).to(device)
    image_features = clip.encode_image(x)
    text_features = encode_tokens(clip, tokens.to(device), batch_size=len(tokens))
    loss = clip_loss(
        image_features, text_features, clip.logit_scale, labels.to(device), positives, mentions.to(device)
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(clip.parameters(), grad_clip)
    optimizer.step()
    with torch.no_grad():
        clip.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    return loss.item()


def contrastive_train(
    clip: nn.Module,
    tokenizer: Callable,
    *,
    steps: int | None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    seed: int = TRAIN_SEED,
    start_batch: int = 0,
    minutes: float | None = None,
    max_steps: int | None = None,
    positives: str = "subset",
    workers: int = 1,
    grad_clip: float = 1.0,
    eval_every: int = 0,
    eval_fn: Callable[[nn.Module], float] | None = None,
    progress: bool = True,
    spec: SceneSpec | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Contrastive training of an open_clip model in place; returns the run's record.

    ``steps`` fixes the cosine schedule's length. With ``steps=None`` the schedule is sized from the speed
    of the first steps to fill ``minutes`` (recorded as ``schedule_steps``). ``minutes`` also stops the
    loop early if time runs out; ``max_steps`` stops it after that many steps whatever the schedule.
    Every parameter trains (the caller's ``requires_grad`` flags are overridden); the model ends in
    eval mode with gradients off, as ``load_backbone`` leaves a backbone. ``on_step(step, model)`` runs
    after every step (snapshots); it must leave the model as it found it.
    """
    if steps is None and minutes is None:
        raise ValueError("give steps, minutes, or both")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.manual_seed(seed)
    clip.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(_param_groups(clip, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = _Schedule(lr, steps, warmup, None if minutes is None else minutes * 60.0)
    data = CaptionedScenes(seed, batch_size, tokenizer, start_batch=start_batch, spec=spec)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    losses, evals = _LossWindow(), []
    start, step, lr_now = time.perf_counter(), 0, 0.0
    bar = tqdm(total=steps, desc="pretrain", unit="step", disable=not progress)
    try:
        for batch in loader:
            elapsed = time.perf_counter() - start
            if max_steps is not None and step >= max_steps:
                break
            if schedule.budget is not None and elapsed > schedule.budget:
                break
            lr_now = schedule.rate(step, elapsed)
            bar.total = schedule.steps
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            loss = _step(clip, optimizer, batch, positives, grad_clip)
            step += 1
            losses.add(step, loss, lr_now, time.perf_counter() - start)
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss:.3f}", lr=f"{lr_now:.2e}", scale=f"{clip.logit_scale.exp().item():.1f}"
            )
            if eval_fn is not None and eval_every and step % eval_every == 0:
                evals.append({"step": step, "map": eval_fn(clip)})
                tqdm.write(f"step {step}: loss {loss:.3f}, validation zero-shot mAP {evals[-1]['map']:.4f}")
                clip.train()
            if on_step is not None:
                on_step(step, clip)
            if schedule.steps is not None and step >= schedule.steps:
                break
    finally:
        bar.close()
        clip.eval().requires_grad_(False)
    losses.add(step, 0.0, lr_now, time.perf_counter() - start, final=True)
    return {
        "steps": step,
        "schedule_steps": schedule.steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": schedule.warm,
        "seed": seed,
        "start_batch": start_batch,
        "positives": positives,
        "concepts": {"order_seed": CONCEPT_ORDER_SEED, "exponent": CONCEPT_EXPONENT},
        "seconds": round(time.perf_counter() - start, 1),
        "history": losses.history,
        "evals": evals,
    }


# ---------------------------------------------------------------------------------------------- measuring


def _as_model(target: Backbone | CapNet | nn.Module, templates: Sequence[str], model_name: str) -> CapNet:
    if isinstance(target, CapNet):
        return target
    if not isinstance(target, Backbone):  # a bare open_clip model, e.g. mid-training: measure a copy
        clip = copy.deepcopy(target).eval()
        device = next(clip.parameters()).device
        cfg = BackboneConfig(name=model_name, pretrained=None, device=device.type)
        target = Backbone(clip, None, open_clip.get_tokenizer(model_name), cfg, "in training", device)
    config = ModelConfig(graph=GraphConfig(templates=list(templates)))
    return CapNet(target, SCENE_CLASSES, config, zero_shot=True)


@torch.no_grad()
def zero_shot_map(
    target: Backbone | CapNet | nn.Module,
    n: int = 1000,
    seed: int = EVAL_SEED,
    *,
    templates: Sequence[str] = SCENE_TEMPLATES,
    class_probs: Sequence[float] | None = None,
    spec: SceneSpec | None = None,
    batch_size: int = 250,
    model_name: str = MODEL_NAME,
) -> dict[str, Any]:
    """mAP on ``n`` scenes of stream ``seed`` (class-balanced unless ``class_probs`` says otherwise).

    ``target`` is a Backbone (scored zero-shot with template-ensembled ``templates`` features, through
    ``CapNet(..., zero_shot=True)``), an open_clip model (wrapped the same way, on a copy), or any
    ``CapNet`` whose classes are scene classes (scored as it is: trained prompts, GCN and all).
    Returns ``capnet.metrics.lt_map``'s dict (``total``, ``per_class``, ...; every class counts as
    "head") plus ``class_names`` and ``n``. ``model_name`` names a bare model's architecture (its tokenizer).
    A CapNet is left in the mode (train or eval) it came in.
    """
    model = _as_model(target, templates, model_name)
    was_training = model.training
    model.eval()
    unknown = [c for c in model.class_names if c not in SCENE_CLASSES]
    if unknown:
        raise ValueError(f"not scene classes: {unknown}")
    columns = [SCENE_CLASSES.index(c) for c in model.class_names]
    visual = model.clip.visual
    size = image_size(visual)
    scores, targets = [], []
    for start in range(0, n, batch_size):
        images, labels, _ = scene_batch(
            min(batch_size, n - start), seed, class_probs=class_probs, spec=spec, start=start
        )
        x = scene_tensor(images, visual.image_mean, visual.image_std, size)
        scores.append(model.predict_logits(x).cpu())
        targets.append(labels[:, columns])
    model.train(was_training)
    result = lt_map(torch.cat(scores), np.concatenate(targets), np.full(len(columns), 100))
    result["class_names"] = list(model.class_names)
    result["n"] = n
    return result


# ---------------------------------------------------------------------------------------------- weights


def save_clip_weights(clip: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """fp16 safetensors of the whole open_clip state dict (the logit scale stays fp32), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in clip.state_dict().items():
        t = t.detach().cpu()
        tensors[name] = (t.half() if t.is_floating_point() and t.numel() > 1 else t.float()).contiguous()
    return save_atomic(tensors, path, {METADATA_KEY: json.dumps(metadata)})


def read_pretrain_metadata(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def load_synth_backbone(path: str | Path = DEFAULT_WEIGHTS, device: str = "cpu") -> Backbone:
    """The shipped tiny CLIP (frozen, eval mode), as ``load_backbone`` gives it."""
    return load_backbone(name=MODEL_NAME, pretrained=None, weights=str(path), device=device)


# ---------------------------------------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m capnet.world.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="weights file (.safetensors)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget of the training loop (default 20 when --steps is not given)",
    )
    p.add_argument("--steps", type=int, default=None, help="schedule length: reproduces a run exactly")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: all)")
    p.add_argument(
        "--save-at",
        type=lambda v: sorted({int(x) for x in v.split(",") if x}),
        default=[],
        metavar="STEPS",
        help="also write snapshots OUT-stepN.safetensors at these steps (comma-separated), each "
        "reproducible with --max-steps N",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=TRAIN_SEED)
    p.add_argument(
        "--positives",
        choices=POSITIVES,
        default="subset",
        help="which captions count as true of an image: its own only (none, as CLIP), those of scenes with "
        "the same classes (equal), or every caption whose named objects are all in it (subset, default)",
    )
    p.add_argument("--model", default=MODEL_NAME, help="open_clip architecture (registered by capnet)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the training process")
    p.add_argument("--workers", type=int, default=1, help="scene-generating worker processes")
    p.add_argument(
        "--eval-every", type=int, default=250, help="validation zero-shot mAP every N steps (0: off)"
    )
    p.add_argument("--eval-n", type=int, default=1000, help="scenes in the final balanced test set")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.steps is None and args.minutes is None:
        args.minutes = 20.0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clip = open_clip.create_model(args.model, pretrained=None)
    tokenizer = open_clip.get_tokenizer(args.model)
    n_params = sum(p.numel() for p in clip.parameters())
    print(
        f"{args.model}: {n_params / 1e6:.2f} M parameters; training on {os.cpu_count()} CPU(s), "
        f"{args.threads} thread(s)",
        flush=True,
    )

    if args.save_at and args.steps is None:
        print("pretrain: --save-at needs --steps (a snapshot is reproduced by --steps S --max-steps N)")
        return 2

    def validate(model: nn.Module) -> float:
        return float(zero_shot_map(model, n=300, seed=VAL_SEED, model_name=args.model)["total"])

    def reproduce(schedule_steps: int, steps: int) -> str:
        cmd = ["python", "-m", "capnet.world.pretrain", "--out", str(args.out)]
        cmd += ["--steps", str(schedule_steps)]
        for flag in ("batch_size", "lr", "weight_decay", "warmup", "seed", "model", "threads", "positives"):
            cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        if steps != schedule_steps:
            cmd += ["--max-steps", str(steps)]
        return shlex.join(cmd)

    def snapshot(step: int, model: nn.Module) -> None:
        if step in args.save_at:
            path = args.out.with_name(f"{args.out.stem}-step{step}{args.out.suffix}")
            meta = {"format": "capnet-pretrain/1", "model": args.model, "snapshot_step": step,
                    "reproduce": reproduce(args.steps, step)}  # fmt: skip
            save_clip_weights(model, path, meta)
            tqdm.write(f"step {step}: snapshot {path}")

    run = contrastive_train(
        clip,
        tokenizer,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        seed=args.seed,
        minutes=args.minutes,
        max_steps=args.max_steps,
        positives=args.positives,
        workers=args.workers,
        eval_every=args.eval_every,
        eval_fn=validate if args.eval_every else None,
        progress=not args.no_progress,
        on_step=snapshot if args.save_at else None,
    )
    meta = {
        "format": "capnet-pretrain/1",
        "model": args.model,
        "parameters": n_params,
        "command": "python -m capnet.world.pretrain "
        + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "reproduce": reproduce(run["schedule_steps"], run["steps"]),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "threads": args.threads,
        **{k: v for k, v in run.items()},
        "images_seen": run["steps"] * args.batch_size,
    }
    save_clip_weights(clip, args.out, meta)
    # The measurement is of the file as shipped (fp16), through the public loading path.
    backbone = load_backbone(name=args.model, pretrained=None, weights=str(args.out), device="cpu")
    result = zero_shot_map(backbone, n=args.eval_n, seed=EVAL_SEED)
    meta["zero_shot"] = {
        "n": args.eval_n,
        "seed": EVAL_SEED,
        "templates": list(SCENE_TEMPLATES),
        "map": result["total"],
        "per_class": dict(zip(SCENE_CLASSES, result["per_class"])),
    }
    save_clip_weights(clip, args.out, meta)
    size_mb = Path(args.out).stat().st_size / 1e6
    print(
        f"wrote {args.out} ({size_mb:.1f} MB) after {run['steps']} steps in {run['seconds']:.0f} s; "
        f"zero-shot mAP on {args.eval_n} balanced scenes (seed {EVAL_SEED}): {result['total']:.4f}"
    )
    for name, ap in zip(SCENE_CLASSES, result["per_class"]):
        print(f"  {name:22s} {ap:.4f}")
    print(f"reproduce: {meta['reproduce']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
