"""The training loop: fixed epochs, warm-up + cosine, clipping, optional class-aware sampling, resumable.

Every source of randomness is re-seeded from (seed, epoch) at the start of each epoch, so a run resumed
from its last epoch state continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from capnet.backbone import autocast, image_size
from capnet.checkpoint import save_checkpoint
from capnet.config import LossConfig, RunConfig
from capnet.data import ImageDataset, Records
from capnet.engine.evaluate import finite
from capnet.engine.features import FlipViews, cached_features, compute_features
from capnet.engine.schedule import build_optimizer, build_scheduler
from capnet.engine.state import load_state_tensors, load_training_state, save_training_state
from capnet.losses import build_loss
from capnet.metrics import lt_map
from capnet.model import CapNet

STATE_FILE = "last_state.safetensors"
MODEL_FILE = "model.safetensors"
LOG_FILE = "log.jsonl"


class TrainingStopped(Exception):
    """``fit``'s ``should_stop`` asked for an end: raised between two steps, with the epoch unfinished."""


class ClassAwareSampler(Sampler[int]):
    """Pick a class uniformly, then an image containing it: tail classes are seen as often as head ones."""

    def __init__(self, labels: np.ndarray, num_samples: int, generator: torch.Generator) -> None:
        self.by_class = [np.flatnonzero(labels[:, c]) for c in range(labels.shape[1])]
        self.by_class = [idx for idx in self.by_class if len(idx)]
        self.num_samples = num_samples
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        classes = torch.randint(len(self.by_class), (self.num_samples,), generator=self.generator)
        picks = torch.rand(self.num_samples, generator=self.generator)
        for c, u in zip(classes.tolist(), picks.tolist()):
            members = self.by_class[c]
            yield int(members[min(int(u * len(members)), len(members) - 1)])


def sample_classes(targets: torch.Tensor, k: int) -> torch.Tensor:
    """k distinct classes for one step, in increasing order.

    The batch's positive classes come first (a random k of them when there are more), then random others.
    Draws from torch's global generator, which ``fit`` seeds per epoch (so resuming stays exact).
    """
    priority = torch.rand(targets.shape[1]) + (targets.detach() > 0).any(dim=0).cpu().float()
    return priority.topk(min(k, targets.shape[1])).indices.sort().values


def train_transform(model: CapNet) -> T.Compose:
    """Random crops and flips for a tower that trains (adapters); a frozen tower uses cached fixed views."""
    visual = model.clip.visual
    return T.Compose(
        [
            T.RGB(),
            T.RandomResizedCrop(
                image_size(visual), scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC
            ),
            T.RandomHorizontalFlip(),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(visual.image_mean, visual.image_std),
        ]
    )


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


def loss_from_config(cfg: LossConfig, class_freq: np.ndarray, num_train: int) -> torch.nn.Module:
    if cfg.name == "dbfocal":
        options = {k: v for k, v in asdict(cfg).items() if k != "name"}
        return build_loss("dbfocal", class_freq, num_train, **options)
    if cfg.name == "focal":
        return build_loss("focal", gamma=cfg.gamma)
    return build_loss(cfg.name)


def split_validation(records: Records, fraction: float, seed: int) -> tuple[Records, Records | None]:
    """A validation split carved from the training set (model selection never looks at the test set).

    Stratified, so that every class can be judged: rarest classes first, each class with n_c >= 2 images
    gets min(max(1, round(fraction * n_c)), n_c // 2) validation positives (counting those already there),
    never taking an image whose move would leave some class with fewer than half its images for training;
    then random images fill the split up to round(fraction * N). The split is larger than that only when
    the per-class minimums need more (at most one image per class over), and smaller only when no movable
    image is left. Deterministic in ``seed``.
    """
    if fraction <= 0:
        return records, None
    labels = np.asarray(records.labels, dtype=bool)
    n, n_classes = labels.shape
    n_val = max(1, int(round(fraction * n)))
    rng = np.random.default_rng(seed)
    counts = labels.sum(axis=0)
    may_leave = counts // 2  # images of class c that validation may take; the rest stay for training
    in_val = np.zeros(n, dtype=bool)
    taken = np.zeros(n_classes, dtype=np.int64)

    def movable(i: int) -> bool:
        return not in_val[i] and bool(np.all(taken[labels[i]] < may_leave[labels[i]]))

    def take(i: int) -> None:
        in_val[i] = True
        taken[labels[i]] += 1

    for c in sorted(range(n_classes), key=lambda c: (counts[c], c)):
        want = min(max(1, int(round(fraction * counts[c]))), may_leave[c])
        for i in rng.permutation(np.flatnonzero(labels[:, c])):
            if taken[c] >= want:
                break
            if movable(int(i)):
                take(int(i))
    room = n_val - int(in_val.sum())
    for i in rng.permutation(n):
        if room <= 0:
            break
        if movable(int(i)):
            take(int(i))
            room -= 1
    if not in_val.any():  # every image holds a class's only examples: fall back to a plain cut
        in_val[rng.permutation(n)[:n_val]] = True
    return records.subset(np.flatnonzero(~in_val)), records.subset(np.flatnonzero(in_val))


class EpochKeeper:
    """Which epoch the checkpoint keeps: the best validation total mAP (ties: the earlier epoch) or the last.

    The best epoch's tensors travel inside the resumable state, so a resumed run keeps the same epoch.
    """

    PREFIX = "best/"

    def __init__(self, rule: str, epochs: int, validated: bool) -> None:
        self.rule, self.epochs, self.validated = rule, epochs, validated
        self.epoch: int | None = None
        self.score: float | None = None
        self.best: dict[str, torch.Tensor] = {}

    def observe(self, row: dict[str, Any], model: CapNet) -> None:
        if self.rule == "last":
            self.epoch = row["epoch"]
            return
        score = row.get("val_total")
        if self.epoch is None or (score is not None and (self.score is None or score > self.score)):
            self.epoch, self.score = row["epoch"], score
            self.best = {k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {self.PREFIX + k: v for k, v in self.best.items()}

    def meta(self) -> dict[str, Any]:
        if self.rule == "best":
            reason = f"best validation epoch {self.epoch} of {self.epochs}"
        else:
            reason = "last epoch" if self.validated else "last epoch (no validation split)"
        return {"rule": self.rule, "epoch": self.epoch, "epochs": self.epochs, "val_total": self.score,
                "reason": reason}  # fmt: skip

    def restore(self, meta: dict[str, Any] | None, tensors: dict[str, torch.Tensor]) -> None:
        if meta and meta.get("rule") == self.rule:
            self.epoch, self.score = meta["epoch"], meta["val_total"]
            self.best = {k[len(self.PREFIX) :]: v for k, v in tensors.items()}

    def load_into(self, model: CapNet) -> None:
        """Put the kept epoch's tensors into the model (a no-op for the last epoch: they are there)."""
        if not self.best:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in self.best.items():
                params[name].copy_(tensor)


class Trainer:
    def __init__(
        self, cfg: RunConfig, model: CapNet, train: Records, val: Records | None, out_dir: Path
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.train_records = train
        self.val_records = val
        self.out_dir = Path(out_dir)
        self.dist = Distributed.from_env()
        self.class_freq = train.class_freq
        tc = cfg.train
        self.criterion = loss_from_config(cfg.loss, self.class_freq, len(train)).to(model.device)
        self.use_cache = tc.feature_cache and model.peft == "none"
        sampled = tc.classes_per_step is not None and model.prompts is not None
        if sampled and tc.classes_per_step < 1:
            raise ValueError(f"train.classes_per_step must be at least 1, not {tc.classes_per_step}")
        self.classes_per_step = (
            tc.classes_per_step if sampled and tc.classes_per_step < model.num_classes else None
        )
        self.cached: torch.Tensor | None = None
        if self.use_cache:
            self.cached = self._features(train, FlipViews(model.image_transform()), "train features")
        self.steps_per_epoch = max(1, -(-len(train) // (tc.batch_size * self.dist.world)))
        self.optimizer = build_optimizer(model, tc)
        self.scheduler = build_scheduler(self.optimizer, tc, self.steps_per_epoch)
        self.last_epoch: dict[str, Any] = {}
        self.keep_rule = tc.keep if val is not None else "last"
        self.keeper = EpochKeeper(self.keep_rule, tc.epochs, validated=val is not None)
        self.kept: dict[str, Any] = {}
        self.ddp = (
            DistributedDataParallel(model, find_unused_parameters=False) if self.dist.world > 1 else None
        )

    def _features(self, records: Records, transform, desc: str) -> torch.Tensor:
        tc = self.cfg.train
        kwargs = dict(batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.data.num_workers, desc=desc)
        if tc.cache_dir:
            return cached_features(self.model, records, transform, tc.cache_dir, **kwargs)[0]
        return compute_features(self.model, records, transform, **kwargs)

    def _loader(self, epoch: int) -> DataLoader:
        tc = self.cfg.train
        generator = torch.Generator().manual_seed(tc.seed * 100_003 + epoch * 97 + self.dist.rank)
        labels = torch.as_tensor(self.train_records.labels, dtype=torch.float32)
        if self.use_cache:
            view = torch.randint(self.cached.shape[1], (len(labels),), generator=generator)
            dataset = TensorDataset(self.cached[torch.arange(len(labels)), view], labels)
        else:
            dataset = ImageDataset(self.train_records, train_transform(self.model))
        per_rank = -(-len(labels) // self.dist.world)
        if tc.class_aware_sampling:
            sampler: Sampler[int] = ClassAwareSampler(self.train_records.labels, per_rank, generator)
        else:
            perm = torch.randperm(
                len(labels), generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
            )
            perm = perm.repeat(2)[
                self.dist.rank : self.dist.rank + per_rank * self.dist.world : self.dist.world
            ]
            sampler = perm.tolist()
        workers = 0 if self.use_cache else self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_size=tc.batch_size,
            sampler=sampler,
            num_workers=workers,
            generator=generator,
            pin_memory=self.model.device.type == "cuda",
        )

    def calibrate_biases(self) -> None:
        """Start from biases that flag about n_c / N of the training images (see CapNet.calibrate)."""
        if self.cached is not None:
            feats = self.cached[:, 0]
        else:
            feats = self._features(self.train_records, self.model.image_transform(), "calibration").squeeze(1)
        n = len(self.train_records)
        prior = np.clip(self.class_freq / n, 1.0 / n, 1.0 - 1.0 / n)
        self.model.calibrate(feats, prior)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_records is None:
            return {}
        model = self.model.eval()
        if self.use_cache:
            feats = self._features(self.val_records, model.image_transform(), "val features")[:, 0]
            logits = model.score(feats.to(model.device), model.class_features())
        else:
            loader = DataLoader(
                ImageDataset(self.val_records, model.image_transform()),
                batch_size=self.cfg.eval.batch_size,
                num_workers=self.cfg.data.num_workers,
            )
            logits = torch.cat([model.predict_logits(x) for x, _, _ in loader])
        result = lt_map(logits.cpu().numpy(), self.val_records.labels, self.class_freq)
        return {f"val_{k}": finite(result[k]) for k in ("total", "head", "medium", "tail")}

    def _log(self, row: dict[str, Any]) -> None:
        if self.dist.main:
            with open(self.out_dir / LOG_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")

    def _train_epoch(self, epoch: int, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One pass over the training set, seeded from (seed, epoch); returns the epoch's log row."""
        tc = self.cfg.train
        torch.manual_seed(tc.seed * 1_000 + epoch)
        self.model.train()
        if self.classes_per_step:
            self.model.refresh_feature_bank()
        network = self.ddp or self.model
        seen, total_loss, began = 0, 0.0, time.perf_counter()
        bar = tqdm(
            self._loader(epoch),
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            unit="batch",
            disable=None if self.dist.main else True,
            leave=False,
        )
        for batch in bar:
            if should_stop is not None and should_stop():
                bar.close()
                raise TrainingStopped(f"stopped in epoch {epoch + 1} after {seen} images")
            inputs, targets = batch[0].to(self.model.device), batch[1].to(self.model.device)
            step_kwargs = {}
            if self.classes_per_step:
                step_kwargs["classes"] = sample_classes(targets, self.classes_per_step)
            with autocast(self.model.device):
                logits = network(inputs, features=self.use_cache, **step_kwargs)
            loss = self.criterion(logits.float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], tc.grad_clip
                )
            self.optimizer.step()
            self.scheduler.step()
            seen += len(targets)
            total_loss += float(loss.detach()) * len(targets)
            rate = seen / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix(
                loss=f"{float(loss.detach()):.4f}",
                lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                img_s=f"{rate:.0f}",
            )
        return {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(seen, 1),
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": seen / max(time.perf_counter() - began, 1e-9) * self.dist.world,
        }

    def _end_epoch(self, row: dict[str, Any]) -> None:
        """Validate, remember the best epoch, save the resumable state (rank 0), log, wait for all ranks."""
        if self.dist.main:
            row.update(self.validate())
            self.keeper.observe(row, self.model)
            row["best_epoch"] = self.keeper.epoch
            if row["epoch"] == self.cfg.train.epochs:
                row["kept"] = self.keeper.meta()["reason"]
            save_training_state(
                self.out_dir / STATE_FILE,
                self.model,
                self.optimizer,
                self.scheduler,
                row["epoch"] - 1,
                {"config": asdict(self.cfg), "kept": self.keeper.meta()},
                extra_tensors=self.keeper.tensors(),
            )
        self._log(row)
        self.last_epoch = row
        if self.dist.world > 1:
            dist.barrier()

    def fit(
        self,
        resume: bool = False,
        stop_after: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Path | None:
        """Train for the configured epochs; returns the final checkpoint's path.

        ``stop_after`` ends this call after that many epochs (a time-boxed job); ``resume`` continues it.
        Returns None when stopped early. ``should_stop`` is asked before every step, so a cancel or a
        deadline takes effect within one step rather than one epoch (raises ``TrainingStopped``).
        The checkpoint holds the epoch ``train.keep`` selects; ``self.kept`` says which and why.
        """
        tc = self.cfg.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.out_dir / STATE_FILE
        start = 0
        self.keeper = EpochKeeper(self.keep_rule, tc.epochs, validated=self.val_records is not None)
        if resume and state_path.is_file():
            meta = load_training_state(state_path, self.model, self.optimizer, self.scheduler)
            start = meta["epoch"] + 1
            self.keeper.restore(meta.get("kept"), load_state_tensors(state_path, EpochKeeper.PREFIX))
        elif tc.calibrate_init:
            self.calibrate_biases()
        end = tc.epochs if stop_after is None else min(tc.epochs, start + stop_after)
        for epoch in range(start, end):
            self._end_epoch(self._train_epoch(epoch, should_stop))
        if end < tc.epochs:
            return None
        final = self.out_dir / MODEL_FILE
        if self.dist.main:
            self.keeper.load_into(self.model)
            self.kept = self.keeper.meta()
            save_checkpoint(
                self.model.eval(),
                final,
                {
                    "class_freq": self.class_freq.tolist(),
                    "num_train": len(self.train_records),
                    "run": self.cfg.name,
                    "kept": self.kept,
                },
            )
        return final
