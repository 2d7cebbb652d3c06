"""The `capnet` command: train, evaluate and apply CAPNET models from the shell.

Every failure a user can cause (a bad config or flag, missing images, unknown classes, absent weights, a
run folder that cannot be resumed) ends in one line on stderr and exit status 2, never a traceback.
torch and open_clip load only when a command runs, so `capnet --help` answers at once.

A subcommand is two functions here: ``add_NAME(sub)``, decorated with ``@command``, builds its parser
with ``subparser(...)`` (summary, description, example) and sets ``func``; ``cmd_NAME(args)`` imports the
library inside its body, makes one library call and writes the result. Commands are listed in the order
they are registered; one with subcommands of its own (``capnet world scenes``) adds a nested
``add_subparsers`` in its ``add_`` function.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capnet._version import __version__

EPILOG = "Run `capnet COMMAND --help` for a command's options and an example."
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def command(
    add: Callable[[argparse._SubParsersAction], None],
) -> Callable[[argparse._SubParsersAction], None]:
    """Register a subcommand: ``add(sub)`` creates its parser and sets ``func`` (returns an exit status)."""
    COMMANDS.append(add)
    return add


class _Help(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (where there is one); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def subparser(sub: argparse._SubParsersAction, name: str, summary: str, about: str, example: str):
    """A subcommand's parser with a one-line summary (in `capnet --help`), a description and an example."""
    return sub.add_parser(
        name,
        help=summary,
        description=f"{about}\n\nexample:\n  {example}",
        formatter_class=_Help,
    )


def _with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        required=True,
        help="run config YAML (see configs/); relative paths in it are taken from its folder",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=5 (YAML value; repeatable; "
        "relative paths from the current folder)",
    )


def _pretrained(value: str) -> str | None:
    from capnet.config import pretrained_tag

    return pretrained_tag(value)


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _results_text(results: dict[str, dict[str, Any]]) -> list[str]:
    names = {"single": "single view", "tta": "test-time ensembling"}
    return [
        f"test mAP ({names.get(k, k)}): total {_percent(r['total'])}, head {_percent(r['head'])}, "
        f"medium {_percent(r['medium'])}, tail {_percent(r['tail'])}"
        for k, r in results.items()
    ]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _emit(summary: dict[str, Any], lines: list[str], fmt: str) -> None:
    print(json.dumps(_rounded(summary), indent=1) if fmt == "json" else "\n".join(lines))


# ---------------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from capnet.config import load_run_config
    from capnet.engine.run import train_run

    cfg = load_run_config(args.config, args.set)
    out_dir = Path(args.out or Path(cfg.train.out_dir) / cfg.name)
    if args.resume and not (out_dir / "last_state.safetensors").is_file():
        print(f"capnet: nothing to resume in {out_dir}: starting at epoch 1", file=sys.stderr)
    result = train_run(cfg, out_dir, resume=args.resume, evaluate_test=not args.no_eval)
    if not result.main:  # the other ranks of a distributed run stay quiet
        return 0
    lines = [f"checkpoint: {result.checkpoint} ({result.kept.get('reason')})", *_results_text(result.results)]
    if result.report:
        lines.append(f"report: {result.report}")
    summary = {
        "checkpoint": str(result.checkpoint),
        "kept": result.kept,
        "report": str(result.report) if result.report else None,
        **result.results,
    }
    _emit(summary, lines, args.format)
    return 0


@command
def add_train(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "train",
        "train CAPNET on a dataset, then evaluate on its test split",
        "Train CAPNET (prompts, GCN, biases and optionally adapters) for train.epochs epochs, keeping the\n"
        "best validation epoch (train.keep), then evaluate the kept model on the test split. Each epoch\n"
        "prints one line (loss, validation mAP); the run folder gets log.jsonl, last_state.safetensors\n"
        "(for --resume), model.safetensors and the test report.",
        "capnet train --config configs/synth_lt.yaml --set train.epochs=5 --out runs/try",
    )
    _with_config(p)
    p.add_argument("--out", help="run folder (default: train.out_dir/name from the config)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run folder's last finished epoch (refused if classes, backbone or model differ)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation at the end")
    p.add_argument("--format", choices=["text", "json"], default="text", help="the final summary's form")
    p.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import numpy as np

    from capnet.checkpoint import CheckpointError, model_from_checkpoint, read_metadata
    from capnet.config import load_run_config
    from capnet.data.sources import load_split
    from capnet.engine.evaluate import evaluate, write_report
    from capnet.engine.run import checked

    cfg = load_run_config(args.config, args.set)
    if args.no_tta:
        cfg.eval.tta = False
    meta = read_metadata(args.checkpoint)
    if "class_freq" not in meta:
        raise CheckpointError(f"{args.checkpoint} holds no training class counts: train it with capnet train")
    weights = args.weights or cfg.model.backbone.weights
    model = model_from_checkpoint(args.checkpoint, weights=weights, device=args.device)
    test = checked(load_split(cfg.data, "test"), cfg.data.skip_bad, "test")
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
    kept = (meta.get("kept") or {}).get("reason", "epoch not recorded")
    lines = [f"checkpoint: {args.checkpoint} ({kept})", *_results_text(report["results"]), f"report: {path}"]
    _emit({"report": str(path), "kept": meta.get("kept"), **report["results"]}, lines, args.format)
    return 0


@command
def add_eval(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "eval",
        "evaluate a checkpoint on a dataset's test split",
        "Score the test split of the config's data with a trained checkpoint and write report.json,\n"
        "per_class.csv and scores.csv (the app's dashboard reads them). The backbone weights come from\n"
        "--weights, else the config's model.backbone.weights, else the file the checkpoint was trained\n"
        "with, else CAPNET_CLIP_WEIGHTS.",
        "capnet eval --config configs/synth_lt.yaml --checkpoint runs/synth_lt/model.safetensors "
        "--out reports/synth_lt",
    )
    _with_config(p)
    p.add_argument("--checkpoint", required=True, help="a model.safetensors written by capnet train")
    p.add_argument("--out", required=True, help="folder for report.json, per_class.csv, scores.csv")
    p.add_argument("--name", help="run name shown in reports (default: the config's name)")
    p.add_argument("--no-tta", action="store_true", help="score single views only (no five-crop ensembling)")
    p.add_argument("--weights", help="local CLIP weights file (overrides the config's and the checkpoint's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--format", choices=["text", "json"], default="text", help="the summary's form")
    p.set_defaults(func=cmd_eval)


# -------------------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from capnet.predict import format_rows, predict_files

    model, calibration = _model_and_calibration(args)
    rows = predict_files(
        model,
        args.paths,
        threshold=args.threshold,
        top=args.top,
        tta=args.tta,
        batch_size=args.batch_size,
        num_workers=args.workers,
        on_skip=lambda problem: print(f"capnet: skipped {problem}", file=sys.stderr),
        calibration=calibration,
    )
    text = format_rows(rows, args.format, args.threshold)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 0


def _model_and_calibration(args: argparse.Namespace):
    """The model the flags name (a checkpoint, or zero-shot over --labels/--preset) and, for zero-shot,
    its calibration (also applied to the model's biases); shared by predict and explain."""
    if args.checkpoint and (args.labels or args.preset):
        raise ValueError(
            "--labels and --preset choose classes for zero-shot, but a checkpoint brings its own: "
            "drop them, or drop --checkpoint for zero-shot"
        )
    calibration = None
    if args.checkpoint:
        from capnet.checkpoint import model_from_checkpoint

        model = model_from_checkpoint(args.checkpoint, weights=args.weights, device=args.device)
    else:
        model = _zero_shot_model(args)
    if not model.zero_shot and (args.calibrate_on or args.raw):
        raise ValueError(
            "--calibrate-on and --raw concern zero-shot scores; a trained checkpoint keeps its biases: "
            "drop them, or drop --checkpoint for zero-shot"
        )
    if model.zero_shot:
        calibration = _calibrate(model, args.calibrate_on, args.raw)
        print(f"capnet: {calibration.describe()}", file=sys.stderr)
    return model, calibration


def _zero_shot_model(args: argparse.Namespace):
    import open_clip

    from capnet.backbone import load_backbone
    from capnet.labelsets import PRESETS
    from capnet.model import CapNet

    names = PRESETS[args.preset] if args.preset else [n.strip() for n in (args.labels or "").split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError("zero-shot needs classes: --labels 'cat,dog' or --preset voc (or a --checkpoint)")
    pretrained = args.pretrained
    if pretrained == "default":
        tags = (
            open_clip.list_pretrained_tags_by_model(args.model)
            if args.model in open_clip.list_models()
            else []
        )
        pretrained = "openai" if "openai" in tags else None
    backbone = load_backbone(name=args.model, pretrained=pretrained, weights=args.weights, device=args.device)
    return CapNet(backbone, names, zero_shot=True)


def _calibrate(model, folder: str | None, raw: bool):
    """A zero-shot model's calibration: the reference rule the app shares (``choose_reference``), or none."""
    from capnet.calibration import calibrate_zero_shot, choose_reference, reference_features, uncalibrated
    from capnet.world.pretrain import MODEL_NAME
    from capnet.world.scenes import reference_scenes

    if raw:
        if folder:
            raise ValueError("--raw leaves zero-shot scores uncalibrated: drop --calibrate-on, or --raw")
        return uncalibrated(model)
    scenes = reference_scenes if model.config.backbone.name == MODEL_NAME else None
    feats = reference_features(model, choose_reference(folder, scenes))
    for problem in feats.problems:
        print(f"capnet: skipped {problem}", file=sys.stderr)
    return calibrate_zero_shot(model, feats)


def _model_options(p: argparse.ArgumentParser) -> None:
    """The flags that choose a model: a checkpoint, or zero-shot over named classes (predict, explain)."""
    from capnet.labelsets import PRESETS

    p.add_argument("--checkpoint", help="a trained capnet checkpoint (without one: zero-shot)")
    p.add_argument("--labels", help="zero-shot: comma-separated class names, e.g. 'cat,dog'")
    p.add_argument("--preset", choices=sorted(PRESETS), help="zero-shot: a benchmark's label set")
    p.add_argument("--model", default="ViT-B-16", help="zero-shot: the open_clip model")
    p.add_argument(
        "--pretrained",
        type=_pretrained,
        default="default",
        help="zero-shot: pretrained tag ('default': openai where the model has it); "
        "none for random weights or a --weights file that is no tag's",
    )
    p.add_argument(
        "--weights", help="local CLIP weights file (else CAPNET_CLIP_WEIGHTS, else the checkpoint's)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument(
        "--calibrate-on",
        metavar="DIR",
        help="zero-shot: calibrate on the images under DIR (default: the synthetic world's scenes for "
        "capnet-synth, else scikit-image's photos)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="zero-shot: no calibration; the sigmoid of the scaled cosine, not a probability",
    )


@command
def add_predict(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "predict",
        "label image files or folders",
        "Rank every class for each image, with a trained checkpoint or zero-shot over the classes you\n"
        "name. The table shows each image's path as given and its top classes; a * marks those at or\n"
        "above --threshold. Unreadable files are skipped with a note. Zero-shot probabilities are\n"
        "calibrated on a fixed reference set (one line on stderr says which; see --calibrate-on, --raw).",
        "capnet predict photos/ --checkpoint runs/mine/model.safetensors --top 3",
    )
    p.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    _model_options(p)
    p.add_argument(
        "--threshold", type=float, default=0.5, help="probability at which a class counts as present"
    )
    p.add_argument("--top", type=int, default=5, help="classes shown per image in the table")
    p.add_argument("--tta", action="store_true", help="five-crop test-time ensembling")
    p.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="output form (json also carries each class's raw logit)",
    )
    p.add_argument("--output", help="write to this file instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image-decoding worker processes")
    p.set_defaults(func=cmd_predict)


# -------------------------------------------------------------------------------------------- explain
MAX_EXPLAIN_CLASSES = 20


def _safe_name(text: str) -> str:
    """A file-name part from user text: letters, digits, '.', '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _explain_classes(model, names: list[str]) -> list[int]:
    """--class names to indices; an unknown one is named with its close matches."""
    import difflib

    lookup = {n.lower(): i for i, n in enumerate(model.class_names)}
    out = []
    for name in names:
        key = name.strip().lower()
        if key not in lookup:
            close = difflib.get_close_matches(key, list(lookup), n=3, cutoff=0.5)
            hint = (
                f"; did you mean {', '.join(repr(model.class_names[lookup[c]]) for c in close)}?"
                if close
                else ""
            )
            raise ValueError(f"--class '{name}' is not one of the model's {model.num_classes} classes{hint}")
        if lookup[key] not in out:
            out.append(lookup[key])
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from capnet.explain import evidence_maps, graph_attribution, model_view, overlay, unavailable_reason
    from capnet.explain.maps import MAX_OCCLUSION_GRID
    from capnet.images import load_image
    from capnet.predict import image_files

    if not 1 <= args.grid <= MAX_OCCLUSION_GRID:
        raise ValueError(f"--grid must lie in [1, {MAX_OCCLUSION_GRID}], got {args.grid}")
    if not 1 <= args.top <= MAX_EXPLAIN_CLASSES:
        raise ValueError(f"--top must lie in [1, {MAX_EXPLAIN_CLASSES}], got {args.top}")
    if len(args.classes) > MAX_EXPLAIN_CLASSES:
        raise ValueError(f"at most {MAX_EXPLAIN_CLASSES} --class per run, got {len(args.classes)}")
    files = image_files(args.images)
    model, _calibration = _model_and_calibration(args)
    chosen = _explain_classes(model, args.classes) if args.classes else None
    reason = unavailable_reason(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results, lines = [], []
    for path in files:
        image = load_image(path)
        view, tensor = model_view(model, image)
        with torch.no_grad():
            logits = model.predict_logits(tensor.to(model.device))[0]
            features = model.encode_image(tensor.to(model.device)) if reason is None else None
        classes = chosen or torch.argsort(-logits.float().cpu(), stable=True)[: args.top].tolist()
        _, maps = evidence_maps(model, image, classes, method=args.method, grid=args.grid)
        for c, emap in zip(classes, maps):
            stem = f"{_safe_name(path.stem)}__{_safe_name(emap.class_name)}"
            name, n = f"{stem}.png", 1
            while name in used:
                n += 1
                name = f"{stem}-{n}.png"
            used.add(name)
            title = f"{emap.class_name}  p={emap.probability:.3f}"
            overlay(view, emap.grid, size=max(image.size), title=title).save(out / name)
            entry = {"image": str(path), "png": str(out / name), **emap.to_dict()}
            lines.append(f"{path}  {emap.class_name}: p={emap.probability:.3f}  -> {out / name}")
            if reason is None:
                attribution = graph_attribution(model, features[0], c)
                entry["graph"] = attribution.to_dict()
                lines.append(
                    f"    logit {attribution.logit_without_gcn:.3f} without the GCN, {attribution.logit:.3f} "
                    "with it; largest edge effects:"
                )
                lines += [f"    {line}" for line in attribution.lines()[:3]]
            else:
                entry["graph"] = {"unavailable": reason}
            results.append(entry)
    if reason is not None:
        lines.append(f"no graph attribution: {reason}")
    print(json.dumps(results, indent=1) if args.format == "json" else "\n".join(lines))
    return 0


@command
def add_explain(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "explain",
        "why a class was (not) predicted: evidence maps and label-graph attribution",
        "For each image and class (default: the image's top --top classes) save an evidence map drawn\n"
        "over the image with a colour bar as DIR/IMAGE__CLASS.png: where the model finds the class\n"
        "('fast': each patch's cosine to the class feature; 'occlusion': the drop in its probability when\n"
        "a cell is hidden). For a trained CAPNET model with a GCN it also says how much each label-graph\n"
        "neighbour moved the class's logit. JSON gives each map's grid, probability and logit.",
        "capnet explain photo.jpg --checkpoint runs/mine/model.safetensors --class horse --out maps",
    )
    p.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    _model_options(p)
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="NAME",
        help=f"a class to explain (repeatable, at most {MAX_EXPLAIN_CLASSES}; default: each image's top "
        "classes)",
    )
    p.add_argument("--top", type=int, default=3, help="classes explained per image when no --class is given")
    p.add_argument("--out", required=True, help="folder for the PNG overlays")
    p.add_argument("--method", choices=["fast", "occlusion"], default="fast", help="how the map is made")
    p.add_argument("--grid", type=int, default=8, help="occlusion: cells per side (at most 32)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output form")
    p.set_defaults(func=cmd_explain)


# ------------------------------------------------------------------------------------------- build-lt
def cmd_build_lt(args: argparse.Namespace) -> int:
    from capnet.config import load_run_config
    from capnet.data.longtail import build_longtail, longtail_summary
    from capnet.data.sources import load_split

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


@command
def add_build_lt(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "build-lt",
        "sample a long-tailed training set with the Pareto procedure",
        "Cut the config's whole training split to a long tail (the VOC-LT / COCO-LT procedure) and write\n"
        "its image ids, plus a JSON of class counts and head/medium/tail groups.",
        "capnet build-lt --config configs/voc_lt.yaml --max-per-class 800 \\\n"
        "    --out-ids data/ltsplits/voc-lt/img_id.txt",
    )
    _with_config(p)
    p.add_argument("--max-per-class", type=int, required=True, help="800 for VOC-LT, 1200 for COCO-LT")
    p.add_argument("--min-per-class", type=int, default=1, help="fewest images a class keeps")
    p.add_argument("--pareto-shape", type=float, default=6.0, help="shape of the Pareto class counts")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--out-ids", required=True, help="id list to write (one image id per line)")
    p.add_argument("--out-json", help="class counts and groups (default: next to the id list)")
    p.set_defaults(func=cmd_build_lt)


# ----------------------------------------------------------------------------------------------- data
def _manifest_names() -> list[str]:
    """Shipped dataset manifests, listed without importing the data package (keeps --help fast)."""
    return sorted(p.stem for p in (Path(__file__).parent / "data" / "manifests").glob("*.json"))


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from capnet.data.download import Options, fetch, format_plan, load_manifest, plan

    manifest = load_manifest(args.manifest or args.dataset)
    if args.dry_run:
        print(format_plan(plan(manifest, args.root, args.mirror), args.format))
        return 0
    summary = fetch(manifest, args.root, args.mirror, Options(retries=args.retries, backoff=args.backoff))
    if not summary["downloaded"] and not summary["extracted"] and not summary["images"]:
        line = f"{summary['dataset']}: everything in {summary['root']} is already verified; nothing to do"
    else:
        line = (
            f"{summary['dataset']}: downloaded {len(summary['downloaded'])} files and "
            f"{summary['images']} images, extracted {len(summary['extracted'])} archives "
            f"into {summary['root']}"
        )
    _emit(summary, [line], args.format)
    return 0


def _fetch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=_manifest_names(), help="which benchmark")
    p.add_argument("--root", default="data", help="folder the dataset goes into")
    p.add_argument("--mirror", action="append", default=[], metavar="URL", help="a base URL tried first")
    p.add_argument("--manifest", help="a manifest file replacing the shipped one (mirrors, tests)")
    p.add_argument("--retries", type=int, default=3, help="rounds over all sources after the first")
    p.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry (doubles)")


@command
def add_data(sub: argparse._SubParsersAction) -> None:
    data = subparser(
        sub,
        "data",
        "download the benchmark datasets (checksum-verified)",
        "Data sets by name (voc-lt, coco-lt): `fetch` downloads, verifies and extracts one.",
        "capnet data fetch voc-lt --root data",
    )
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", help="what to do")
    p = subparser(
        actions,
        "fetch",
        "fetch, verify and extract a dataset (resumes; a rerun does nothing)",
        "Download what the benchmark uses, every byte checked against the manifest's sha256, resuming\n"
        "cut transfers and trying mirrors in order; archives are streamed and only the benchmark's files\n"
        "are kept. The layout is the one configs/voc_lt.yaml and configs/coco_lt.yaml read.",
        "capnet data fetch voc-lt --root data --dry-run",
    )
    _fetch_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan; open no connection")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output form")
    p.set_defaults(func=cmd_data_fetch)


# ------------------------------------------------------------------------------------------ reproduce
def cmd_reproduce(args: argparse.Namespace) -> int:
    from capnet.config import load_run_config
    from capnet.data.download import Options, load_manifest
    from capnet.reproduce import reproduce

    manifest = load_manifest(args.manifest or args.dataset)
    cfg = load_run_config(args.config or manifest.config, args.set)
    interactive = sys.stdin is not None and sys.stdin.isatty()
    result = reproduce(
        manifest,
        args.root,
        cfg,
        out_dir=args.out,
        checkpoints_dir=args.checkpoints,
        mirrors=args.mirror,
        options=Options(retries=args.retries, backoff=args.backoff),
        yes=args.yes,
        ask=(lambda q: input(q).strip().lower() in ("y", "yes")) if interactive else None,
        say=lambda line: print(line, file=sys.stderr),
    )
    if result is None:
        return 1
    print(json.dumps(result, indent=1))
    return 0


@command
def add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "reproduce",
        "fetch a benchmark, train and evaluate with the paper's protocol",
        "Fetch the dataset (as `capnet data fetch`), train with its config, evaluate on the test split,\n"
        "write the report and copy the checkpoint where the app serves it. It says first what it will\n"
        "download and roughly how long the run takes here; on a CPU it asks (--yes skips the question).",
        "capnet reproduce voc-lt --root data --yes",
    )
    _fetch_options(p)
    p.add_argument("--config", help="run config (default: the dataset's, e.g. configs/voc_lt.yaml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument("--out", help="run folder (default: train.out_dir/name)")
    p.add_argument("--checkpoints", default="checkpoints", help="where the app looks for checkpoints")
    p.add_argument("--yes", action="store_true", help="do not ask before a long CPU run")
    p.set_defaults(func=cmd_reproduce)


# ---------------------------------------------------------------------------------------------- world
def cmd_world_scenes(args: argparse.Namespace) -> int:
    from capnet.world.scenes import write_scenes

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    path = write_scenes(args.out, args.n, args.seed, balanced=args.balanced, world=args.world)
    print(f"wrote {args.n} scenes: {path}")
    return 0


@command
def add_world(sub: argparse._SubParsersAction) -> None:
    world = subparser(
        sub,
        "world",
        "the synthetic world: write its scenes as a dataset",
        "The offline world the shipped tiny CLIP knows (see checkpoints/capnet-synth.md).",
        "capnet world scenes --out fresh --n 1000 --seed 90210",
    )
    actions = world.add_subparsers(dest="world_command", required=True, metavar="ACTION", help="what to do")
    p = subparser(
        actions,
        "scenes",
        "write N scenes (labels.csv and images/), natural distribution by default",
        "Scenes 0 .. N-1 of stream SEED as a CSV dataset (header path,labels; labels separated by ';'),\n"
        "drawn from the world's natural distribution (as VOC2007 test is), or class-balanced. A seed\n"
        "nobody trained on gives scenes no shipped model has seen.",
        "capnet world scenes --out fresh --n 1000 --seed 90210",
    )
    p.add_argument("--out", required=True, help="folder for labels.csv and images/")
    p.add_argument("--n", type=int, default=1000, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="scene stream")
    p.add_argument("--world", type=int, default=0, help="whose natural distribution (Synth-LT world)")
    p.add_argument("--balanced", action="store_true", help="every class equally often")
    p.set_defaults(func=cmd_world_scenes)


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capnet",
        description="Train, evaluate and apply CAPNET (long-tailed multi-label recognition with CLIP).",
        epilog=EPILOG,
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"capnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause; imported only after a command failed (torch loads with them)."""
    from capnet.backbone import WeightsUnavailableError
    from capnet.data import DataError
    from capnet.images import ImageError

    return (ValueError, DataError, ImageError, WeightsUnavailableError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("capnet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"capnet: error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
