"""Inference: CapNet.predict against bare open_clip, on a batch (throughput) and on one PIL image (latency).

Bare open_clip is ``encode_image`` plus a matrix product with precomputed normalised text features (and the
same sigmoid), on a copy of the backbone taken before CapNet attaches its adapters: same weights, batch,
device and dtype (bf16 autocast on CUDA, float32 on CPU). The single-image path is the app's:
PIL image -> model.image_transform() -> predict, against open_clip's own preprocess -> encode_image -> matmul.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import copy  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_target,
    compare,
    cuda_peak_mb,
    finish,
    load_random,
    model_names,
    new_result,
    paired_ratio,
    parser,
    photo,
    reset_cuda_peak,
    setup,
    time_fn,
)
from capnet.backbone import autocast  # noqa: E402
from capnet.labelsets import COCO  # noqa: E402
from capnet.model import CapNet  # noqa: E402


def bench_model(name: str, args, device: torch.device, result: dict) -> None:
    backbone = load_random(name, device)
    bare = copy.deepcopy(backbone.model).eval()  # CapNet attaches adapters to its backbone in place
    model = CapNet(backbone, list(COCO)).eval()
    with torch.no_grad():
        tokens = backbone.tokenizer([f"a photo of a {c}." for c in COCO]).to(device)
        text = F.normalize(bare.encode_text(tokens).float(), dim=-1)
    scale = model.scale.detach()

    def bare_predict(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device):
            feats = bare.encode_image(images)
        feats = F.normalize(feats.float(), dim=-1)
        return torch.sigmoid(scale * feats @ text.T)

    size = backbone.image_size
    batch_size = args.batch or (4 if args.quick else 64 if device.type == "cuda" else 8)
    batch = torch.randn(batch_size, 3, size, size, device=device)
    with torch.no_grad():
        with autocast(device):
            reference = F.normalize(bare.encode_image(batch).float(), dim=-1)
        atol = 1e-5 if device.type == "cpu" else 1e-2  # bf16 autocast on GPUs
        same = torch.allclose(model.encode_image(batch), reference, atol=atol)
    repeats = 2 if args.quick else args.repeats
    t = compare(
        {"open_clip": lambda: bare_predict(batch), "capnet": lambda: model.predict(batch)},
        device,
        repeats=repeats,
        warmup=1,
    )
    peaks = {}
    if device.type == "cuda":
        paths = (("open_clip", lambda: bare_predict(batch)), ("capnet", lambda: model.predict(batch)))
        for key, fn in paths:
            reset_cuda_peak(device)
            fn()
            peaks[key] = cuda_peak_mb(device)
    cache_hit = time_fn(model.cached_class_features, device, repeats=20, warmup=1)
    rows = result["tables"].setdefault("Batch throughput (no TTA)", [])
    for key in ("open_clip", "capnet"):
        rows.append(
            {
                "model": name,
                "path": "bare open_clip" if key == "open_clip" else "CapNet.predict",
                "adapters": model.peft if key == "capnet" else "-",
                "batch": batch_size,
                "best s/batch": t[key].best,
                "median s/batch": t[key].median,
                "images/s": batch_size / t[key].best,
                "peak CUDA MiB": peaks.get(key),
            }
        )
    throughput = paired_ratio(t["open_clip"], t["capnet"])
    result["ratios"][f"throughput_ratio[{name}]"] = throughput
    result["ratios"][f"throughput_ratio_of_best[{name}]"] = t["open_clip"].best / t["capnet"].best
    result["ratios"][f"class_feature_cache_hit_ms[{name}]"] = cache_hit.median * 1000
    add_target(result, f"throughput capnet/open_clip [{name}]", throughput, ">=", 0.95)
    if not same:
        result["notes"].append(f"{name}: image features differ from bare open_clip's (trained adapters?)")

    # Single image, the app's path against open_clip's own.
    image = photo()
    bare_preprocess = backbone.preprocess

    def app_path() -> torch.Tensor:
        transform = model.image_transform()
        return model.predict(torch.stack([transform(image)]))

    def bare_path() -> torch.Tensor:
        return bare_predict(bare_preprocess(image).unsqueeze(0).to(device))

    lat = compare(
        {"open_clip": bare_path, "capnet": app_path},
        device,
        repeats=repeats + 2,
        warmup=1,
        budget_s=0 if args.quick else 8.0,
    )
    prep = compare(
        {"open_clip": lambda: bare_preprocess(image), "capnet": lambda: model.image_transform()(image)},
        device,
        repeats=5,
        warmup=1,
        budget_s=0 if args.quick else 1.0,
    )
    rows = result["tables"].setdefault("Single-image latency (PIL 640x480 -> probabilities)", [])
    for key in ("open_clip", "capnet"):
        rows.append(
            {
                "model": name,
                "path": "preprocess -> encode_image -> matmul"
                if key == "open_clip"
                else "image_transform() -> predict",
                "best ms": lat[key].best * 1000,
                "median ms": lat[key].median * 1000,
                "of which preprocessing ms": prep[key].best * 1000,
            }
        )
    latency = paired_ratio(lat["capnet"], lat["open_clip"])
    result["ratios"][f"latency_ratio[{name}]"] = latency
    result["ratios"][f"latency_ratio_of_best[{name}]"] = lat["capnet"].best / lat["open_clip"].best
    add_target(result, f"latency capnet/open_clip [{name}]", latency, "<=", 1.10)


def run(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8 on CPU, 64 on CUDA)")
    p.add_argument("--repeats", type=int, default=4, help="interleaved timed repeats per path")
    args = p.parse_args(argv)
    device = setup(args)
    result = new_result("inference", args, device)
    for name in model_names(args):
        bench_model(name, args, device, result)
    result["notes"].append(
        "each ratio is the median over interleaved repeats of the per-repeat ratio (robust to minutes-long "
        "slow-downs of a shared machine, which hit both paths of a repeat alike); *_of_best: of best times"
    )
    return finish(result, args)


if __name__ == "__main__":
    run()
