"""The `capnet` command: train, eval, predict and build-lt.

Every failure a user can cause (a bad config, missing images, unknown classes, absent weights) ends in
one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from capnet.backbone import WeightsUnavailableError, load_backbone
from capnet.checkpoint import CheckpointError, model_from_checkpoint, read_metadata
from capnet.config import ConfigError, RunConfig, from_dict
from capnet.data import DataError, Records, check_images
from capnet.data.longtail import build_longtail, longtail_summary
from capnet.data.sources import load_split
from capnet.images import ImageError
from capnet.labelsets import PRESETS
from capnet.model import CapNet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
USER_ERRORS = (
    ConfigError,
    DataError,
    ImageError,
    CheckpointError,
    WeightsUnavailableError,
    FileNotFoundError,
)


def _set(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set takes key=value, got '{assignment}'")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_run_config(path: str | None, overrides: list[str]) -> RunConfig:
    """A YAML run config with `--set section.key=value` overrides applied before validation."""
    data: dict[str, Any] = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for assignment in overrides:
        _set(data, assignment)
    return from_dict(RunConfig, data, where=Path(path).name if path else "config")


def _checked(records: Records, skip_bad: bool, what: str) -> Records:
    records, problems = check_images(records, skip_bad=skip_bad, desc=f"checking {what} images")
    if problems:
        print(
            f"capnet: skipped {len(problems)} unusable {what} image(s), e.g. {problems[0]}", file=sys.stderr
        )
    return records


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def cmd_train(args: argparse.Namespace) -> int:
    from capnet.engine.evaluate import evaluate, write_report
    from capnet.engine.trainer import Distributed, Trainer, split_validation

    cfg = load_run_config(args.config, args.set)
    _init_distributed()
    out_dir = Path(args.out or Path(cfg.train.out_dir) / cfg.name)
    pool = _checked(load_split(cfg.data, "train"), cfg.data.skip_bad, "training")
    train, val = split_validation(pool, cfg.data.val_fraction, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if torch.distributed.is_initialized() and torch.cuda.is_available():
        cfg.model.backbone.device = f"cuda:{torch.cuda.current_device()}"
    model = CapNet(load_backbone(cfg.model.backbone), pool.class_names, cfg.model, train_labels=train.labels)
    trainer = Trainer(cfg, model, train, val, out_dir)
    checkpoint = trainer.fit(resume=args.resume)
    has_test = bool(cfg.data.test) or cfg.data.format in ("voc", "coco", "nus_wide")
    if Distributed.from_env().main and not args.no_eval and has_test:
        test = _checked(load_split(cfg.data, "test"), cfg.data.skip_bad, "test")
        report, logits = evaluate(
            model,
            test,
            train.class_freq,
            cfg.eval,
            num_workers=cfg.data.num_workers,
            name=cfg.name,
            extra={"checkpoint": str(checkpoint), "kept": trainer.kept, "config": asdict(cfg)},
        )
        path = write_report(report, logits, test, out_dir)
        print(json.dumps({"checkpoint": str(checkpoint), "report": str(path), **report["results"]}, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from capnet.engine.evaluate import evaluate, write_report

    cfg = load_run_config(args.config, args.set)
    if args.no_tta:
        cfg.eval.tta = False
    meta = read_metadata(args.checkpoint)
    if "class_freq" not in meta:
        raise CheckpointError(f"{args.checkpoint} holds no training class counts: train it with capnet train")
    model = model_from_checkpoint(args.checkpoint, weights=args.weights, device=args.device)
    test = _checked(load_split(cfg.data, "test"), cfg.data.skip_bad, "test")
    report, logits = evaluate(
        model,
        test,
        np.asarray(meta["class_freq"]),
        cfg.eval,
        num_workers=cfg.data.num_workers,
        name=args.name or cfg.name,
        extra={"checkpoint": str(args.checkpoint), "kept": meta.get("kept"), "config": asdict(cfg)},
    )
    path = write_report(report, logits, test, args.out)
    print(json.dumps({"report": str(path), **report["results"]}, indent=1))
    return 0


def _image_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    if not files:
        raise DataError("no image files found in the given paths")
    return files


def cmd_predict(args: argparse.Namespace) -> int:
    from capnet.engine.evaluate import score_records

    if args.checkpoint:
        model = model_from_checkpoint(args.checkpoint, weights=args.weights, device=args.device)
    else:
        names = (
            PRESETS[args.preset] if args.preset else [n for n in (args.labels or "").split(",") if n.strip()]
        )
        backbone = load_backbone(
            name=args.model, pretrained=args.pretrained or None, weights=args.weights, device=args.device
        )
        model = CapNet(backbone, names, zero_shot=True)
    files = _image_files(args.paths)
    records = Records(
        list(model.class_names),
        [f.stem for f in files],
        files,
        np.zeros((len(files), model.num_classes), np.uint8),
    )
    records, problems = check_images(records, skip_bad=True, desc="reading images")
    for problem in problems:
        print(f"capnet: skipped {problem}", file=sys.stderr)
    probs = 1 / (
        1
        + np.exp(
            -score_records(model, records, tta=args.tta, batch_size=args.batch_size, num_workers=args.workers)
        )
    )
    rows = []
    for path, row in zip(records.paths, probs):
        order = np.argsort(-row)
        labels = [model.class_names[c] for c in order if row[c] >= args.threshold]
        top = {model.class_names[c]: round(float(row[c]), 4) for c in order[: args.top]}
        rows.append(
            {
                "path": str(path),
                "labels": labels,
                "top": top,
                "probabilities": dict(zip(model.class_names, row.round(6).tolist())),
            }
        )
    if args.format == "json":
        text = json.dumps(rows, indent=1)
    elif args.format == "csv":
        frame = pd.DataFrame(
            [{"path": r["path"], "labels": ";".join(r["labels"]), **r["probabilities"]} for r in rows]
        )
        text = frame.to_csv(index=False)
    else:
        width = max(len(Path(r["path"]).name) for r in rows)
        text = "\n".join(
            f"{Path(r['path']).name:<{width}}  " + ", ".join(f"{k} {v:.2f}" for k, v in r["top"].items())
            for r in rows
        )
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 0


def cmd_build_lt(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.set)
    cfg.data.train_ids = None  # the pool is the whole training split
    pool = load_split(cfg.data, "train")
    selected = build_longtail(
        pool.labels,
        args.max_per_class,
        min_per_class=args.min_per_class,
        pareto_shape=args.pareto_shape,
        seed=args.seed,
    )
    subset = pool.subset(selected)
    Path(args.out_ids).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_ids).write_text("\n".join(subset.image_ids) + "\n")
    summary = longtail_summary(subset.labels, subset.class_names)
    summary.update(
        {
            "max_per_class": args.max_per_class,
            "min_per_class": args.min_per_class,
            "pareto_shape": args.pareto_shape,
            "seed": args.seed,
            "pool_size": len(pool),
        }
    )
    out_json = Path(args.out_json or Path(args.out_ids).with_suffix(".json"))
    out_json.write_text(json.dumps(summary, indent=1))
    print(f"{len(subset)} of {len(pool)} images; groups {summary['group_sizes']}; ids -> {args.out_ids}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--config", required=required, help="run config YAML (see configs/)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set train.epochs=5 (repeatable)",
        )

    p = sub.add_parser("train", help="train CAPNET on a dataset, then evaluate on its test split")
    with_config(p)
    p.add_argument("--out", help="run folder (default: train.out_dir/name)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last epoch")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split")
    with_config(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="folder for report.json, per_class.csv, scores.csv")
    p.add_argument("--name", help="run name shown in reports")
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--weights", help="local CLIP weights file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="label image files or folders")
    p.add_argument("paths", nargs="+")
    p.add_argument("--checkpoint", help="a trained capnet checkpoint (else zero-shot)")
    p.add_argument("--labels", help="comma-separated class names for zero-shot")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a benchmark label set for zero-shot")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default="openai")
    p.add_argument("--weights", help="local CLIP weights file")
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--top", type=int, default=5, help="labels shown per image in the table")
    p.add_argument("--tta", action="store_true", help="five-crop test-time ensembling")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--output", help="write to this file instead of stdout")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("build-lt", help="sample a long-tailed training set with the Pareto procedure")
    with_config(p)
    p.add_argument("--max-per-class", type=int, required=True, help="800 for VOC-LT, 1200 for COCO-LT")
    p.add_argument("--min-per-class", type=int, default=1)
    p.add_argument("--pareto-shape", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-ids", required=True, help="id list to write (one image id per line)")
    p.add_argument("--out-json", help="class counts and groups (default: next to the id list)")
    p.set_defaults(func=cmd_build_lt)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"capnet: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"capnet: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
