"""Data loading: images/s of the data pipeline alone against the model's images/s.

The pipeline is capnet's own: ``ImageDataset`` (decoding with ``capnet.images.load_image``) and a
``DataLoader`` with workers (and pinned memory on CUDA), on generated JPEGs of VOC's typical 500x375 and
COCO's 640x480. Loading is not the bottleneck when the loader delivers more images/s than the model
consumes; the end-to-end row runs both together (workers share the machine's cores with the model).
Decoding at reduced size (PIL's ``Image.draft`` for JPEGs, DCT scaling to at least the model's input
size) is measured per image as a possible gain; capnet decodes at full size.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

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
from capnet.data import ImageDataset  # noqa: E402
from capnet.engine.trainer import train_transform  # noqa: E402
from capnet.images import load_image  # noqa: E402
from capnet.labelsets import VOC  # noqa: E402
from capnet.model import CapNet  # noqa: E402


def draft_load(path: Path, size: int) -> Image.Image:
    """Like load_image, but JPEGs are decoded at the smallest DCT scale that keeps both sides >= size."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


def loader_rate(records, transform, *, workers: int, batch: int, pin: bool, passes: int) -> float:
    """Best images/s over full passes of a fresh DataLoader (worker start-up included, as in an epoch)."""
    best = 0.0
    for _ in range(passes):
        loader = DataLoader(
            ImageDataset(records, transform), batch_size=batch, num_workers=workers, pin_memory=pin
        )
        start = time.perf_counter()
        n = sum(len(images) for images, _, _ in loader)
        best = max(best, n / (time.perf_counter() - start))
    return best


def end_to_end(model, records, transform, workers: int, batch: int, pin: bool, device) -> float:
    """Images/s of the loader feeding the model for real (a feature-extraction pass)."""
    loader = DataLoader(
        ImageDataset(records, transform), batch_size=batch, num_workers=workers, pin_memory=pin
    )
    sync(device)
    start = time.perf_counter()
    seen = 0
    with torch.no_grad():
        for images, _, _ in loader:
            model.encode_image(images.to(device, non_blocking=True))
            seen += len(images)
    sync(device)
    return seen / (time.perf_counter() - start)


def decode_ms(paths: list[Path], size: int) -> dict:
    full, draft = [], []
    for path in paths:
        t = time.perf_counter()
        load_image(path)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        im = draft_load(path, size)
        draft.append(time.perf_counter() - t)
    return {
        "full decode ms": statistics.median(full) * 1000,
        "draft decode ms": statistics.median(draft) * 1000,
        "draft size": "x".join(map(str, im.size)),
    }


def run(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="images per set (default 64; quick 12)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 8 on CPU, 64 CUDA)")
    args = p.parse_args(argv)
    device = setup(args)
    n = args.images or (12 if args.quick else 64)
    batch = args.batch or (4 if args.quick else 64 if device.type == "cuda" else 8)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    worker_counts = [0, 1, 2] if args.quick else sorted({0, 1, 2, min(cores, 8)})
    pin = device.type == "cuda"
    passes = 1 if args.quick else 2
    result = new_result("data", args, device)
    names = model_names(args)
    with tempfile.TemporaryDirectory(prefix="capnet-bench-data-") as tmp:
        sizes = [(160, 120)] if args.quick else [(500, 375), (640, 480)]
        sets = {s: write_photos(Path(tmp) / f"{s[0]}x{s[1]}", n, VOC, size=s, seed=s[0]) for s in sizes}
        model = CapNet(load_random(names[0], device), list(VOC)).eval()
        input_size = model.clip.visual.image_size
        input_size = input_size[0] if isinstance(input_size, (tuple, list)) else input_size
        transforms = {"eval (resize + centre crop)": model.image_transform(), "train": train_transform(model)}
        rows = result["tables"].setdefault(f"Data pipeline alone (batch {batch}, pin_memory={pin})", [])
        best_eval: dict[tuple[int, int], float] = {}
        for size, records in sets.items():
            for label, transform in transforms.items():
                for workers in worker_counts:
                    rate = loader_rate(
                        records, transform, workers=workers, batch=batch, pin=pin, passes=passes
                    )
                    jpeg = f"{size[0]}x{size[1]}"
                    rows.append({"JPEG": jpeg, "transform": label, "workers": workers, "images/s": rate})
                    if label.startswith("eval"):
                        best_eval[size] = max(best_eval.get(size, 0.0), rate)
        decode = result["tables"].setdefault(f"Decoding one JPEG (to at least {input_size} px)", [])
        for size, records in sets.items():
            decode.append({"JPEG": f"{size[0]}x{size[1]}", **decode_ms(records.paths[:16], input_size)})
        del model

        # The models' appetite, and both together: the loader feeding the model for real.
        vs = result["tables"].setdefault("Loader against model (eval transform, 500x375 JPEGs)", [])
        records = sets[sizes[0]]
        default_workers = min(2, cores)
        for name in names:
            model = CapNet(load_random(name, device), list(VOC)).eval()
            transform = model.image_transform()
            pre = torch.stack([transform(load_image(p)) for p in records.paths[:batch]]).to(device)
            with torch.no_grad():
                model.encode_image(pre)  # warm-up
                times = []
                for _ in range(1 if args.quick else 2):
                    sync(device)
                    t = time.perf_counter()
                    model.encode_image(pre)
                    sync(device)
                    times.append(time.perf_counter() - t)
            model_rate = batch / min(times)
            e2e_images = records.subset(range(min(len(records), 2 * batch if device.type == "cpu" else n)))
            e2e = {
                w: end_to_end(model, e2e_images, transform, w, batch, pin, device)
                for w in (0, default_workers)
            }
            loader_alone = best_eval[sizes[0]]
            vs.append(
                {
                    "model": name,
                    "model img/s (forward, preloaded)": model_rate,
                    "loader img/s (best workers)": loader_alone,
                    "loader / model": loader_alone / model_rate,
                    "end to end img/s (0 workers)": e2e[0],
                    f"end to end img/s ({default_workers} workers)": e2e[default_workers],
                    "end to end / model": max(e2e.values()) / model_rate,
                }
            )
            result["ratios"][f"loader_vs_model[{name}]"] = loader_alone / model_rate
            result["ratios"][f"end_to_end_vs_model[{name}]"] = max(e2e.values()) / model_rate
            add_target(result, f"loader / model images/s [{name}]", loader_alone / model_rate, ">=", 1.0)
            del model
        speedups = [r["full decode ms"] / r["draft decode ms"] for r in decode]
        result["ratios"]["draft_decode_speedup"] = max(speedups)
    result["notes"].append(
        "end to end includes worker start-up; on a CPU the workers share the cores with the model's threads"
    )
    return finish(result, args)


if __name__ == "__main__":
    run()
