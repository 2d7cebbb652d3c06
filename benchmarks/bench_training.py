"""Training throughput: feature cache against recomputing, adapters on against off, a step breakdown.

Every run is the real ``Trainer.fit`` on generated 500x375 JPEGs (images/s per epoch from its log):
- ``cache``: frozen image tower, features computed once (two views per image) before the first epoch;
- ``recompute``: frozen image tower, features recomputed every epoch (random crops through the tower);
- ``adapters``: the default image-tower tuning (AdaptFormer on ViT, bias/norm on ResNet), so the tower
  runs forward and backward every step.
The breakdown times one training step part by part (image tower, text tower over the prompts, GCN,
scores + loss, optimiser), each forward plus its share of the backward pass (the graph is cut between
parts, which yields the same gradients as one backward).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_target,
    finish,
    load_random,
    model_names,
    new_result,
    parser,
    setup,
    sync,
    write_photos,
)
from capnet.backbone import autocast  # noqa: E402
from capnet.config import AdapterConfig, DataConfig, LossConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from capnet.engine.schedule import build_optimizer  # noqa: E402
from capnet.engine.trainer import Trainer, loss_from_config  # noqa: E402
from capnet.labelsets import VOC  # noqa: E402
from capnet.model import CapNet  # noqa: E402

SAMPLED = 8  # classes per step of the sampled run (of VOC's 20)
MODES = {
    "cache": dict(adapter="none", feature_cache=True, per_step=None),
    f"cache, classes_per_step={SAMPLED}": dict(adapter="none", feature_cache=True, per_step=SAMPLED),
    "recompute": dict(adapter="none", feature_cache=False, per_step=None),
    "adapters": dict(adapter="auto", feature_cache=False, per_step=None),
}


def fit_run(name: str, mode: str, records, args, device, work: Path) -> dict:
    """One Trainer.fit; returns seconds before the first epoch and images/s of every epoch."""
    spec = MODES[mode]
    if spec["feature_cache"]:
        epochs = args.epochs + 1  # cached epochs are cheap: one more
    elif spec["adapter"] != "none":
        epochs = 1  # the tower's backward makes these the longest epochs: every one costs the same
    else:
        epochs = args.epochs
    cfg = RunConfig(
        name=f"{name}-{mode}",
        model=ModelConfig(adapter=AdapterConfig(kind=spec["adapter"])),
        data=DataConfig(num_workers=args.workers, val_fraction=0.0),
        loss=LossConfig(),
        train=TrainConfig(
            epochs=epochs,
            batch_size=args.batch,
            feature_cache=spec["feature_cache"],
            classes_per_step=spec["per_step"],
            cache_dir=str(work / f"cache-{name}"),  # the same random weights: the second cached run hits
            calibrate_init=False,  # a full extra pass over the images, not part of an epoch
            out_dir=str(work / "runs"),
        ),
    )
    model = CapNet(load_random(name, device), records.class_names, cfg.model)
    out = work / "runs" / f"{name}-{mode}"
    began = time.perf_counter()
    trainer = Trainer(cfg, model, records, None, out)
    setup_s = time.perf_counter() - began
    trainer.fit()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ips = [row["images_per_s"] for row in log]
    return {"setup_s": setup_s, "ips": ips, "peft": model.peft}


def instrumented_step(
    model: CapNet,
    criterion,
    optimizer,
    inputs,
    targets,
    device,
    grad_clip,
    *,
    features: bool = False,
    classes: torch.Tensor | None = None,
) -> dict:
    """One training step, timed part by part; gradients equal those of one backward pass.

    ``features``: the inputs are cached image features. ``classes``: only these prompts go through the
    text tower and the others come from the model's feature bank, as ``CapNet.class_features`` does.
    """
    times: dict[str, float] = {}
    if classes is not None:
        classes = classes.to(model.device)

    def clock() -> float:
        sync(device)
        return time.perf_counter()

    t = clock()
    img = F.normalize(inputs.float(), dim=-1) if features else model.encode_image(inputs)
    img_in = img.detach().requires_grad_(img.requires_grad)
    fwd_image = clock() - t
    t = clock()
    with autocast(device):
        txt = model.prompts(classes).float()
    txt_in = txt.detach().requires_grad_()
    fwd_text = clock() - t
    t = clock()
    merged = txt_in
    if classes is not None:
        bank = model._feature_bank  # the bank CapNet keeps for steps over a subset of classes
        if bank is None:  # a warm-up over a few classes: any values do
            bank = torch.zeros(model.num_classes, txt.shape[1], device=txt.device)
        merged = bank.index_copy(0, classes, txt_in)
    with autocast(device):
        cls = model.gcn(merged, model.adjacency) if model.gcn is not None else merged
    cls = F.normalize(cls, dim=-1)
    cls_in = cls.detach().requires_grad_()
    fwd_gcn = clock() - t
    t = clock()
    loss = criterion(model.score(img_in, cls_in).float(), targets)
    loss.backward()
    times["scores + loss"] = clock() - t
    t = clock()
    cls.backward(cls_in.grad)
    times["GCN"] = fwd_gcn + clock() - t
    t = clock()
    txt.backward(txt_in.grad)
    times["text tower (prompts)"] = fwd_text + clock() - t
    t = clock()
    if img.requires_grad:
        img.backward(img_in.grad)
    times["image tower"] = fwd_image + clock() - t
    t = clock()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times["optimizer (clip + step)"] = clock() - t
    if classes is not None and model._feature_bank is not None:
        model._feature_bank = merged.detach()
    return times


def whole_step(model: CapNet, criterion, optimizer, images, targets, device, grad_clip) -> float:
    """The trainer's own step, for comparison with the sum of the parts."""
    sync(device)
    t = time.perf_counter()
    with autocast(device):
        logits = model(images)
    loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    sync(device)
    return time.perf_counter() - t


def breakdown(name: str, records, args, device) -> list[dict]:
    tc = TrainConfig()
    model = CapNet(load_random(name, device), records.class_names, ModelConfig()).train()
    criterion = loss_from_config(LossConfig(), records.class_freq, len(records)).to(device)
    optimizer = build_optimizer(model, tc)
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.step_batch, 3, size, size, generator=generator).to(device)
    targets = torch.as_tensor(records.labels[: args.step_batch], dtype=torch.float32, device=device)
    step = (model, criterion, optimizer, images, targets, device, tc.grad_clip)
    instrumented_step(model, criterion, optimizer, images[:2], targets[:2], device, tc.grad_clip)  # warm-up
    parts = [instrumented_step(*step)]  # one step each: a ViT-B/16 step on a CPU takes many seconds
    whole = [whole_step(*step)]
    with torch.no_grad():
        sync(device)
        t = time.perf_counter()
        model.encode_image(images)
        sync(device)
        frozen = [time.perf_counter() - t]
    rows = []
    total = 0.0
    for key in parts[0]:
        value = statistics.median(p[key] for p in parts)
        total += value
        rows.append({"model": name, "tuning": model.peft, "part": key, "seconds": value})
    for row in rows:
        row["share"] = row["seconds"] / total
    rows.append({"model": name, "tuning": model.peft, "part": "sum of parts", "seconds": total, "share": 1.0})
    rows.append(
        {"model": name, "tuning": model.peft, "part": "whole step (Trainer's)", "seconds": min(whole)}
    )
    rows.append(
        {
            "model": name,
            "tuning": "none",
            "part": "image tower, frozen (forward only)",
            "seconds": statistics.median(frozen),
        }
    )
    return rows


def steady(ips: list[float], cached: bool) -> float:
    """Best epoch: after the first with the cache (which the first epoch builds), else any epoch (each
    recomputes everything; the first one only adds warm-up)."""
    return max(ips[1:]) if cached and len(ips) > 1 else max(ips)


def run(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="training images (default 32; quick 8)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32, the TrainConfig default)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2; cache runs one more)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 2; quick 0)")
    p.add_argument("--step-batch", type=int, default=None, help="step breakdown batch (CPU 8, CUDA 32)")
    args = p.parse_args(argv)
    device = setup(args)
    args.images = args.images or (8 if args.quick else 32)
    args.batch = args.batch or (4 if args.quick else 32)
    args.epochs = args.epochs or 2
    args.workers = args.workers if args.workers is not None else (0 if args.quick else 2)
    args.step_batch = args.step_batch or (4 if args.quick else 32 if device.type == "cuda" else 8)
    result = new_result("training", args, device)
    epochs_table = result["tables"].setdefault("Images/s per epoch (Trainer.fit)", [])
    with tempfile.TemporaryDirectory(prefix="capnet-bench-") as tmp:
        work = Path(tmp)
        size = (64, 48) if args.quick else (500, 375)
        records = write_photos(work / "images", args.images, VOC, size=size)
        for name in model_names(args):
            runs = {mode: fit_run(name, mode, records, args, device, work) for mode in MODES}
            for mode, r in runs.items():
                first_epoch_s = records.labels.shape[0] / r["ips"][0]
                epochs_table.append(
                    {
                        "model": name,
                        "mode": mode,
                        "tuning": r["peft"],
                        "images": len(records),
                        "batch": args.batch,
                        "before epoch 1 s": r["setup_s"],
                        "epoch 1 img/s (incl. set-up)": len(records) / (r["setup_s"] + first_epoch_s),
                        "steady img/s": steady(r["ips"], MODES[mode]["feature_cache"]),
                        "all epochs img/s": [round(v, 2) for v in r["ips"]],
                    }
                )
            cache = steady(runs["cache"]["ips"], True)
            sampled = steady(runs[f"cache, classes_per_step={SAMPLED}"]["ips"], True)
            recompute = steady(runs["recompute"]["ips"], False)
            adapters = steady(runs["adapters"]["ips"], False)
            first = (len(records) / (runs["cache"]["setup_s"] + len(records) / runs["cache"]["ips"][0])) / (
                runs["recompute"]["ips"][0]
            )
            result["ratios"][f"cache_vs_recompute[{name}]"] = cache / recompute
            result["ratios"][f"cache_vs_recompute_first_epoch[{name}]"] = first
            result["ratios"][f"adapters_on_vs_off[{name}]"] = adapters / recompute
            result["ratios"][f"cache_sampled_{SAMPLED}_vs_recompute[{name}]"] = sampled / recompute
            label = f"feature cache / recompute, after epoch 1 [{name}]"
            add_target(result, label, cache / recompute, ">=", 10)
            rows = breakdown(name, records, args, device)
            result["tables"].setdefault(f"Training step breakdown (batch {args.step_batch})", []).extend(rows)
            text = next(r["seconds"] for r in rows if r["part"].startswith("text tower"))
            result["ratios"][f"text_tower_share_of_cached_step[{name}]"] = text / sum(
                r["seconds"] for r in rows if r["part"] in ("text tower (prompts)", "GCN", "scores + loss")
            )
    result["notes"].append(
        "with the cache an epoch costs one text-tower pass over all class prompts per step; the ratio is "
        "(image tower over a batch + text pass) / text pass, so it grows with the batch and the tower's cost"
    )
    return finish(result, args)


if __name__ == "__main__":
    run()
