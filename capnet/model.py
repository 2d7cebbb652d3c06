"""The CAPNET model: prompted class features refined by a GCN, scored as sigmoid(cosine / t + b).

Scoring: logit_c = s * cos(v, f'_c) + b_c with s = 1 / t trainable (it starts at the backbone's CLIP logit
scale) and b_c a per-class bias. The zero-shot mode uses template-ensembled text features in place of
f', with the same scoring.

Calibration: with s near 100 (OpenAI CLIP) every cosine of 0.2 maps to a logit of 20, so an untrained
model's raw sigmoid would say "yes" to every class. ``calibrate`` therefore sets b_c from the cosines of a
set of images so that P(c) = 0.5 exactly at the (1 - prior_c) quantile of class c's cosine: an untrained
model then flags roughly a prior_c fraction of images, and a probability of 0.5 reads as "as likely as
the class's usual rate". Training starts from (and then learns) those biases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from capnet.adapters import apply_peft
from capnet.backbone import Backbone, autocast, image_size
from capnet.config import ModelConfig
from capnet.gcn import ResidualGCN
from capnet.graph import LabelGraph, cooccurrence_graph, text_graph
from capnet.prompts import ClassPrompts
from capnet.text import resolve_templates, template_features
from capnet.tta import FiveCropViews, SingleView, view_transform

MAX_LOGIT_SCALE = 100.0
TRAINABLE_PARTS = frozenset({"prompts", "gcn", "adapters", "temperature", "bias"})


def part_of(name: str) -> str:
    """Which trainable part a parameter name belongs to."""
    if name.startswith("prompts."):
        return "prompts"
    if name.startswith("gcn."):
        return "gcn"
    if name == "logit_scale":
        return "temperature"
    if name == "class_bias":
        return "bias"
    return "adapters"  # everything trainable inside the image tower


def validate_class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(n).strip() for n in class_names]
    if not names:
        raise ValueError("the label set is empty: give at least one class name")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"empty class name(s) at position(s) {empty}")
    seen: set[str] = set()
    dupes = sorted({n for n in names if n.lower() in seen or seen.add(n.lower())})
    if dupes:
        raise ValueError(f"duplicated class name(s): {dupes}")
    return names


class CapNet(nn.Module):
    """CLIP with class-specific prompts, a text-embedding label graph, a residual GCN and PEFT adapters."""

    def __init__(
        self,
        backbone: Backbone,
        class_names: Sequence[str],
        config: ModelConfig | None = None,
        *,
        zero_shot: bool = False,
        train_labels: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        # The backbone actually used is the one recorded, whatever the config said.
        self.config = dataclasses.replace(config or ModelConfig(), backbone=backbone.config)
        self.class_names = validate_class_names(class_names)
        self.zero_shot = zero_shot
        self.device_type = backbone.device.type
        self.clip = backbone.model.requires_grad_(False)
        templates = resolve_templates(self.config.graph.templates)
        self.register_buffer(
            "text_features", template_features(self.clip, backbone.tokenizer, self.class_names, templates)
        )
        self.prompts: ClassPrompts | None = None
        self.gcn: ResidualGCN | None = None
        self.graph: LabelGraph | None = None
        self.peft = "none"
        if not zero_shot:
            pc = self.config.prompt
            self.prompts = ClassPrompts(
                self.clip,
                backbone.tokenizer,
                self.class_names,
                pc.n_ctx,
                pc.init,
                pc.init_std,
                class_chunk=pc.class_chunk,
            )
            gc = self.config.graph
            if gc.source == "cooccurrence":
                if train_labels is None:
                    raise ValueError("a co-occurrence graph needs the training labels (train_labels=...)")
                self.graph = cooccurrence_graph(
                    train_labels,
                    self.class_names,
                    mode=gc.sparsify,
                    topk=gc.topk,
                    threshold=gc.threshold,
                    p=gc.p,
                )
            else:
                self.graph = text_graph(
                    self.text_features,
                    self.class_names,
                    mode=gc.sparsify,
                    topk=gc.topk,
                    threshold=gc.threshold,
                    p=gc.p,
                )
            if self.config.gcn.enabled:
                cfg = self.config.gcn
                self.gcn = ResidualGCN(backbone.embed_dim, cfg.hidden, cfg.layers, cfg.negative_slope)
            self.peft = apply_peft(self.clip.visual, self.config.adapter)
        adjacency = self.graph.adjacency if self.graph is not None else torch.zeros(0, 0)
        self.register_buffer("adjacency", adjacency, persistent=False)
        init_scale = self.config.init_logit_scale or backbone.logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(float(init_scale)).log())
        self.logit_scale.requires_grad_(self.config.learn_temperature and not zero_shot)
        self.class_bias = nn.Parameter(torch.zeros(len(self.class_names)))
        self.class_bias.requires_grad_(not zero_shot)
        self.to(backbone.device)
        # What training may change, fixed at construction: checkpoints hold exactly these tensors even
        # when a fine-tuning job freezes some of them (see set_trainable).
        self.trainable_names = [n for n, p in self.named_parameters() if p.requires_grad]
        self._cache_key: tuple | None = None
        self._cache: torch.Tensor | None = None
        # Training with a subset of classes per step: the last features computed for every class.
        self._feature_bank: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def train(self, mode: bool = True) -> CapNet:
        """The frozen backbone stays in eval mode: BatchNorm statistics and dropout never change."""
        super().train(mode)
        self.clip.eval()
        return self

    def image_transform(self, *, tta: bool = False, flips: bool = False) -> SingleView | FiveCropViews:
        """The preprocessing this model expects: one view, or five crops (and flips) for ensembling."""
        visual = self.clip.visual
        return view_transform(image_size(visual), visual.image_mean, visual.image_std, tta=tta, flips=flips)

    def class_features(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class features (C, embed): prompts through the text tower, plus the GCN residual.

        With ``classes`` (a training option for large label sets, ``TrainConfig.classes_per_step``) only
        those prompts go through the text tower, and only their contexts get gradients; every other class
        uses the features last computed for it (the feature bank, see ``refresh_feature_bank``). The GCN
        and the scores still cover all C classes.
        """
        if self.prompts is None:
            return self.text_features
        feats = self.prompts().float() if classes is None else self._banked_features(classes)
        if self.gcn is not None:
            feats = self.gcn(feats, self.adjacency)
        return F.normalize(feats, dim=-1)

    def refresh_feature_bank(self) -> None:
        """Recompute every class's prompt features (no gradients) for steps that encode only some classes."""
        if self.prompts is None:
            return
        with torch.no_grad(), autocast(self.device):
            self._feature_bank = self.prompts().float()

    def _banked_features(self, classes: torch.Tensor) -> torch.Tensor:
        bank = self._feature_bank
        if bank is None or bank.device != self.device or bank.shape[0] != self.num_classes:
            self.refresh_feature_bank()
            bank = self._feature_bank
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.device)
        feats = bank.index_copy(0, classes, self.prompts(classes).float().to(bank.dtype))
        self._feature_bank = feats.detach()
        return feats

    def _text_param_key(self) -> tuple:
        params = [p for m in (self.prompts, self.gcn) if m is not None for p in m.parameters()]
        return (self.device, *((id(p), p._version) for p in params))

    def cached_class_features(self) -> torch.Tensor:
        """Class features computed once and reused until a text-side parameter changes (in place or not)."""
        key = self._text_param_key()
        if self._cache is None or key != self._cache_key:
            with torch.no_grad(), autocast(self.device):
                self._cache = self.class_features().float()
            self._cache_key = key
        return self._cache

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            feats = self.clip.encode_image(images.to(self.device))
        return F.normalize(feats.float(), dim=-1)

    def score(self, image_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        """Logits from normalised features: s * cosine + b, in float32 (bf16 scores create AP ties)."""
        return self.scale * image_features.float() @ class_features.float().T + self.class_bias

    def forward(
        self, inputs: torch.Tensor, *, features: bool = False, classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Training path: logits (B, C) of images, or of cached image features when ``features``.

        ``classes``: encode only these classes' prompts this step (see ``class_features``).
        """
        with autocast(self.device):
            class_features = self.class_features(classes)
        image_features = F.normalize(inputs.float(), dim=-1) if features else self.encode_image(inputs)
        return self.score(image_features, class_features)

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of (B, 3, H, W) images, or of (B, V, 3, H, W) views averaged per image (TTA)."""
        views = images.shape[1] if images.dim() == 5 else 1
        flat = images.flatten(0, 1) if images.dim() == 5 else images
        logits = self.score(self.encode_image(flat), self.cached_class_features())
        return logits.view(-1, views, self.num_classes).mean(dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, C); see the module docstring for what they mean before training."""
        return torch.sigmoid(self.predict_logits(images))

    @torch.no_grad()
    def calibrate(self, image_features: torch.Tensor, prior: Sequence[float] | torch.Tensor | float) -> None:
        """Set the class biases so that P(c) = 0.5 at the (1 - prior_c) quantile of class c's cosines."""
        feats = F.normalize(image_features.float().to(self.device), dim=-1)
        prior_t = torch.as_tensor(prior, dtype=torch.float32, device=self.device).expand(self.num_classes)
        if feats.shape[0] < 2:
            raise ValueError("calibration needs at least two images")
        if ((prior_t <= 0) | (prior_t >= 1)).any():
            raise ValueError("calibration priors must lie strictly between 0 and 1")
        cos = feats @ self.cached_class_features().T
        quantiles = torch.stack([torch.quantile(cos[:, c], 1 - prior_t[c]) for c in range(self.num_classes)])
        self.class_bias.copy_(-self.scale * quantiles)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly what training may change: what a checkpoint stores."""
        params = dict(self.named_parameters())
        return {name: params[name].detach() for name in self.trainable_names}

    def set_trainable(self, parts: set[str]) -> None:
        """Choose what trains: any of "prompts", "gcn", "adapters", "temperature", "bias"."""
        unknown = parts - TRAINABLE_PARTS
        if unknown:
            raise ValueError(f"unknown part(s) {sorted(unknown)}; choose from {sorted(TRAINABLE_PARTS)}")
        params = dict(self.named_parameters())
        for name in self.trainable_names:
            params[name].requires_grad_(part_of(name) in parts)
