"""Multi-label classification losses: distribution-balanced focal loss (with CAPNET class re-weighting),
plain BCE, sigmoid focal loss and asymmetric loss, plus a name-based factory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AsymmetricLoss", "BCELoss", "DBFocalLoss", "FocalLoss", "build_loss", "LOSS_NAMES"]

LOSS_NAMES: tuple[str, ...] = ("dbfocal", "bce", "focal", "asl")


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    # Half-precision logits lose too much in log/exp; float64 is kept so gradcheck stays exact.
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _prepare(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast logits and (possibly bool/int) targets to one float dtype; shapes must agree exactly."""
    if logits.shape != targets.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape)}")
    dtype = _compute_dtype(logits)
    return logits.to(dtype), targets.to(device=logits.device, dtype=dtype)


class DBFocalLoss(nn.Module):
    """Distribution-balanced loss (Wu et al., ECCV 2020) with an optional class-aware weight.

    Re-balancing undoes the over-sampling of head classes that co-occur with tail labels, and the
    negative-tolerant part (class bias + scaled negative logits) stops the flood of easy negatives
    from suppressing rare classes. ``class_weight_power`` > 0 additionally up-weights rare classes.
    """

    inv_freq: torch.Tensor
    neg_bias: torch.Tensor
    class_weight: torch.Tensor

    def __init__(
        self,
        class_freq: Sequence[float] | np.ndarray | torch.Tensor,
        num_train: int,
        *,
        mu: float = 0.3,
        neg_scale: float = 5.0,
        init_bias: float = 0.05,
        alpha: float = 0.1,
        beta: float = 10.0,
        gamma: float = 2.0,
        balance: float = 2.0,
        class_weight_power: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(class_freq, torch.Tensor):
            counts = class_freq.detach().cpu().to(torch.float64).numpy()
        else:
            counts = np.asarray(class_freq, dtype=np.float64)
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"class_freq must be a non-empty 1-D sequence, got shape {counts.shape}")
        n_total = float(num_train)
        if n_total < 2:
            raise ValueError(f"num_train must be at least 2, got {num_train}")
        if not np.all(np.isfinite(counts)) or counts.min() < 0 or counts.max() > n_total:
            raise ValueError(f"class_freq entries must lie in [0, num_train={num_train}]")
        if neg_scale <= 0:
            raise ValueError(f"neg_scale must be positive, got {neg_scale}")

        self.num_classes = int(counts.size)
        self.num_train = int(num_train)
        self.mu = float(mu)
        self.neg_scale = float(neg_scale)
        self.init_bias = float(init_bias)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.balance = float(balance)
        self.class_weight_power = float(class_weight_power)

        # Clamp so that classes absent from (or present in every) training image keep a finite bias.
        n = np.clip(counts, 1.0, n_total - 1.0)
        neg_bias = -self.init_bias * np.log(n_total / n - 1.0) / self.neg_scale
        q = n ** (-self.class_weight_power)
        q = q / q.mean()
        # Precomputed in float64, stored as float32 so .to(device) works on any backend.
        self.register_buffer("inv_freq", torch.as_tensor(1.0 / n, dtype=torch.float32))
        self.register_buffer("neg_bias", torch.as_tensor(neg_bias, dtype=torch.float32))
        self.register_buffer("class_weight", torch.as_tensor(q, dtype=torch.float32))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_train={self.num_train}, mu={self.mu}, "
            f"neg_scale={self.neg_scale}, init_bias={self.init_bias}, alpha={self.alpha}, beta={self.beta}, "
            f"gamma={self.gamma}, balance={self.balance}, class_weight_power={self.class_weight_power}"
        )

    @torch.no_grad()
    def rebalance_weight(self, targets: torch.Tensor) -> torch.Tensor:
        """Weights depend only on labels, so they carry no gradient."""
        inv_freq = self.inv_freq.to(targets.dtype)
        r = (targets * inv_freq).sum(dim=1, keepdim=True)
        has_pos = r > 0
        # A row with no positive label has r = 0, i.e. p = +inf and sigmoid -> 1; set it explicitly.
        p = inv_freq / torch.where(has_pos, r, torch.ones_like(r))
        w = self.alpha + torch.sigmoid(self.beta * (p - self.mu))
        w = torch.where(has_pos, w, torch.full_like(w, self.alpha + 1.0))
        return w * self.class_weight.to(targets.dtype)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be (B, {self.num_classes}) to match class_freq, got {tuple(logits.shape)}"
            )
        z, y = _prepare(logits, targets)
        w = self.rebalance_weight(y)
        # Out-of-place: the caller's logits must stay untouched.
        z = z + self.neg_bias.to(z.dtype)
        scale = y + (1.0 - y) * self.neg_scale
        z_reg = z * scale
        w_reg = w / scale
        bce = F.binary_cross_entropy_with_logits(z_reg, y, reduction="none")
        # Per-element pt from the unweighted BCE; a batch-mean pt would blur hard and easy samples.
        pt = torch.exp(-bce)
        loss = self.balance * (1.0 - pt).pow(self.gamma) * w_reg * bce
        return loss.mean()


class BCELoss(nn.Module):
    """Plain mean binary cross-entropy on logits, the unweighted baseline."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y = _prepare(logits, targets)
        return F.binary_cross_entropy_with_logits(z, y, reduction="mean")


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017): down-weights easy elements so rare hard ones dominate."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] or be None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y = _prepare(logits, targets)
        # -log p_t computed from logits is numerically stable where log(sigmoid) is not.
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        pt = torch.exp(-bce)
        loss = (1.0 - pt).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = (self.alpha * y + (1.0 - self.alpha) * (1.0 - y)) * loss
        return loss.mean()


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021): focuses harder on negatives and discards very easy ones.

    The mean over elements (not the sum used in the paper) is returned so its scale matches the other
    losses here and does not grow with batch size or number of classes.
    """

    def __init__(
        self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float | None = 0.05, eps: float = 1e-8
    ) -> None:
        super().__init__()
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.clip = 0.0 if clip is None else float(clip)
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}, eps={self.eps}"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, y = _prepare(logits, targets)
        p = torch.sigmoid(z)
        # Probability shifting: negatives with p <= clip contribute nothing at all.
        p_m = (p - self.clip).clamp(min=0.0) if self.clip > 0 else p
        loss_pos = -(1.0 - p).pow(self.gamma_pos) * torch.log(p.clamp(min=self.eps))
        loss_neg = -p_m.pow(self.gamma_neg) * torch.log((1.0 - p_m).clamp(min=self.eps))
        return (y * loss_pos + (1.0 - y) * loss_neg).mean()


def build_loss(
    name: str,
    class_freq: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    num_train: int | None = None,
    **options: Any,
) -> nn.Module:
    """Config-driven construction; class counts are only needed (and only used) by ``dbfocal``."""
    key = name.lower().strip()
    if key == "dbfocal":
        if class_freq is None or num_train is None:
            raise ValueError("loss 'dbfocal' needs the training class counts: pass class_freq and num_train")
        return DBFocalLoss(class_freq, num_train, **options)
    if key == "bce":
        return BCELoss(**options)
    if key == "focal":
        return FocalLoss(**options)
    if key == "asl":
        return AsymmetricLoss(**options)
    raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
