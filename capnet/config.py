"""Typed configuration: dataclasses with defaults, loaded from YAML or plain dicts.

Every CHOICE the paper leaves open (see the README) is a field here with its default, so a run's
config file records exactly what was built.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or dict that does not fit the dataclass it is loaded into."""


NO_TAG = ("", "none", "null")


def pretrained_tag(value: str | None) -> str | None:
    """A pretrained tag, or None for "no tag": "", "none" and "null" (any case) all mean None."""
    if value is None or value.strip().lower() in NO_TAG:
        return None
    return value.strip()


@dataclass
class BackboneConfig:
    """Which open_clip model to build and where its weights come from."""

    name: str = "ViT-B-16"
    # An open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...) or None (also "" / "none" / "null")
    # for random weights or a local file that is not a tag's (the synthetic world's capnet-synth).
    pretrained: str | None = "openai"
    # A local weights file standing in for the tag's download (or used alone when pretrained is None).
    # Without one, the CAPNET_CLIP_WEIGHTS environment variable names it.
    weights: str | None = None
    # Random weights only (no tag, no file): the seed the tower is built from, so that every process
    # (train, eval, predict) builds the same random tower.
    init_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.pretrained, str):
            self.pretrained = pretrained_tag(self.pretrained)

    # None: QuickGELU exactly when the pretrained tag was trained with it (all OpenAI weights).
    quick_gelu: bool | None = None
    device: str = "auto"
    cache_dir: str | None = None


@dataclass
class PromptConfig:
    """Class-specific soft prompts (CoOp style, one context per class)."""

    n_ctx: int = 16
    # A phrase such as "a photo of a": contexts start as its token embeddings and n_ctx becomes its length.
    init: str | None = None
    init_std: float = 0.02
    # Large label sets: send the prompts through the text tower this many classes at a time; with gradients
    # each chunk is recomputed in the backward pass (checkpointed), so a step holds one chunk's activations
    # instead of all C classes' (the same features and gradients). None: all classes in one pass.
    class_chunk: int | None = None


@dataclass
class GraphConfig:
    """Label-correlation graph over the classes' CLIP text embeddings."""

    # "text": the CAPNET graph from CLIP text embeddings; "cooccurrence": ML-GCN's graph from the training
    # labels (for the ablation: it needs the training labels when the model is built).
    source: Literal["text", "cooccurrence"] = "text"
    sparsify: Literal["topk", "threshold"] = "topk"
    topk: int = 4
    threshold: float = 0.8
    # ML-GCN re-weighting: off-diagonal mass p spread over neighbours, 1 - p kept on the diagonal.
    p: float = 0.2
    # "ensemble" (the CLIP notebook's seven templates plus "a photo of a {}.") or explicit templates.
    templates: str | list[str] = "ensemble"


@dataclass
class GCNConfig:
    enabled: bool = True
    layers: int = 3
    # None: the CLIP embedding width.
    hidden: int | None = None
    negative_slope: float = 0.2


@dataclass
class AdapterConfig:
    """Parameter-efficient tuning of the image tower."""

    # auto: AdaptFormer adapters on ViT towers, bias/norm tuning on ResNet towers.
    kind: Literal["auto", "none", "adaptformer", "lora", "bias_norm"] = "auto"
    bottleneck: int = 2
    scale: float = 0.1
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_targets: list[str] = field(default_factory=lambda: ["attn.out_proj", "mlp.c_fc", "mlp.c_proj"])


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    gcn: GCNConfig = field(default_factory=GCNConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    # None: start from the backbone's own CLIP logit scale (1 / temperature).
    init_logit_scale: float | None = None
    learn_temperature: bool = True


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads "1e-3" as a string; a person writing it means a number.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a config dataclass from a dict, rejecting unknown keys so that typos never pass silently."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()})


# Paths a run config names; a relative one in a config file is taken from the file's folder.
RUN_PATHS = (
    ("model", "backbone", "weights"),
    ("data", "root"),
    ("data", "train_ids"),
    ("data", "class_names"),
    ("train", "out_dir"),
    ("train", "cache_dir"),
)


def rebase_paths(data: dict[str, Any], base: Path, keys: tuple[tuple[str, ...], ...] = RUN_PATHS) -> None:
    """Make the relative paths of a config dict absolute from ``base`` (the config file's folder), in place.

    So a config means the same from any current directory. Lists (class names) and non-strings are left.
    """
    for key in keys:
        node: Any = data
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(key[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            node[key[-1]] = os.path.normpath(base / value)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping, or one line saying why it is not one."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(path: str | Path, cls: type[T] = ModelConfig) -> T:  # type: ignore[assignment]
    path = Path(path)
    return from_dict(cls, _read_yaml(path), where=path.name)


@dataclass
class DataConfig:
    """Where a benchmark's images and labels are, in one of the supported layouts (see the README)."""

    format: Literal["voc", "coco", "nus_wide", "list", "csv"] = "list"
    # voc: the VOCdevkit folder; coco: the folder holding train2017/, val2017/ and annotations/;
    # nus_wide: the NUS-WIDE folder; list/csv: the folder the list or CSV file is named from (the image
    # paths of a list file start here too; those of a CSV start at the CSV's own folder).
    # Relative in a config file: from the file's folder.
    root: str = "data"
    # voc: "2012/trainval"; coco: "train2017"; nus_wide: "Train"; list/csv: the file, relative to root.
    train: str = ""
    test: str = ""
    # An official id list (img_id.txt, COCO's img_id.pkl text file) selecting the long-tailed training set.
    train_ids: str | None = None
    # list format: a "name idx" file or the names themselves; csv: optional fixed class order.
    class_names: str | list[str] | None = None
    # A validation split carved from the training set (never the test set); 0 disables it.
    val_fraction: float = 0.1
    skip_bad: bool = False
    num_workers: int = 2


@dataclass
class LossConfig:
    name: Literal["dbfocal", "bce", "focal", "asl"] = "dbfocal"
    mu: float = 0.3
    neg_scale: float = 5.0
    init_bias: float = 0.05
    alpha: float = 0.1
    beta: float = 10.0
    gamma: float = 2.0
    balance: float = 2.0
    class_weight_power: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.002
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    grad_clip: float | None = 1.0
    class_aware_sampling: bool = False
    # Start the class biases from the calibration of the README, on training images with prior n_c / N.
    calibrate_init: bool = True
    # Reuse image features across epochs when the image tower is frozen (no adapters).
    feature_cache: bool = True
    # Large label sets: per step, send only this many classes' prompts through the text tower (the batch's
    # positive classes first, then random others); the rest reuse features refreshed once per epoch.
    # None: every class every step (exact).
    classes_per_step: int | None = None
    cache_dir: str = ".cache/capnet-features"
    # Which epoch the checkpoint holds: "best" validation total mAP (ties: the earlier epoch) or the "last".
    # Without a validation split (data.val_fraction 0) the last epoch is kept whatever this says.
    keep: Literal["best", "last"] = "best"
    seed: int = 0
    out_dir: str = "runs"


@dataclass
class EvalConfig:
    tta: bool = True
    flips: bool = False
    threshold: float = 0.5
    batch_size: int = 64


@dataclass
class RunConfig:
    """One experiment: what to build, on what data, how to train and evaluate it."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """One ``section.key=value`` override (the value in YAML syntax) applied to a config dict in place."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set takes KEY=VALUE, got '{assignment}'")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML") from None


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
    """A YAML run config with ``--set section.key=value`` overrides.

    Relative paths in the file are taken from the file's folder; those given with ``--set`` from the
    current directory (where the user typed them). A mistake in an override is reported as that
    override's, not the file's.
    """
    data: dict[str, Any] = {}
    name = "config"
    if path:
        path = Path(path)
        data = _read_yaml(path)
        name = path.name
        from_dict(RunConfig, data, where=name)  # the file's own mistakes, named as the file's
        rebase_paths(data, path.resolve().parent)
    for assignment in overrides:
        apply_override(data, assignment)
        try:
            from_dict(RunConfig, data, where="config")
        except ConfigError as exc:
            raise ConfigError(f"--set {assignment}: {str(exc).removeprefix('config.')}") from None
    return from_dict(RunConfig, data, where=name)
