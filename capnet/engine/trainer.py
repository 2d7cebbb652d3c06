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
from capnet.engine.state import load_training_state, save_training_state
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
    """A validation split carved from the training set; model selection never looks at the test set."""
    if fraction <= 0:
        return records, None
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = max(1, int(round(fraction * len(records))))
    return records.subset(np.sort(order[n_val:])), records.subset(np.sort(order[:n_val]))


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
        """
        tc = self.cfg.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.out_dir / STATE_FILE
        start = 0
        if resume and state_path.is_file():
            start = load_training_state(state_path, self.model, self.optimizer, self.scheduler)["epoch"] + 1
        elif tc.calibrate_init:
            self.calibrate_biases()
        network = self.ddp or self.model
        end = tc.epochs if stop_after is None else min(tc.epochs, start + stop_after)
        for epoch in range(start, end):
            torch.manual_seed(tc.seed * 1_000 + epoch)
            self.model.train()
            if self.classes_per_step:
                self.model.refresh_feature_bank()
            loader = self._loader(epoch)
            seen, total_loss, began = 0, 0.0, time.perf_counter()
            bar = tqdm(
                loader,
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
            row = {
                "epoch": epoch + 1,
                "train_loss": total_loss / max(seen, 1),
                "lr": self.scheduler.get_last_lr()[0],
                "images_per_s": seen / max(time.perf_counter() - began, 1e-9) * self.dist.world,
            }
            if self.dist.main:
                row.update(self.validate())
                save_training_state(
                    state_path,
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    epoch,
                    {"config": asdict(self.cfg)},
                )
            self._log(row)
            self.last_epoch = row
            if self.dist.world > 1:
                dist.barrier()
        if end < tc.epochs:
            return None
        final = self.out_dir / MODEL_FILE
        if self.dist.main:
            save_checkpoint(
                self.model.eval(),
                final,
                {
                    "class_freq": self.class_freq.tolist(),
                    "num_train": len(self.train_records),
                    "run": self.cfg.name,
                },
            )
        return final
