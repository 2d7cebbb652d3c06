"""Evidence maps: the fast map against plain prediction (issue 13: at most one extra image-tower pass).

Side by side in one run, interleaved: ``CapNet.predict`` on a batch against ``capnet.explain.fast_maps``
on the same batch (one tower pass with a hook, plus the last block's value path for every class), and,
for scale, the occlusion map of one image (``grid x grid`` occluded copies) against predicting it.
Part of ``make bench`` (run_all.py); alone: ``python benchmarks/bench_explain.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    add_target,
    compare,
    finish,
    load_random,
    model_names,
    new_result,
    paired_ratio,
    parser,
    setup,
)
from capnet.explain import fast_maps, occlusion_maps  # noqa: E402
from capnet.labelsets import COCO  # noqa: E402
from capnet.model import CapNet  # noqa: E402


def bench_model(name: str, args, device: torch.device, result: dict) -> None:
    model = CapNet(load_random(name, device), list(COCO), zero_shot=True).eval()
    size = model.clip.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    batch_size = args.batch or (4 if args.quick else 64 if device.type == "cuda" else 8)
    batch = torch.randn(batch_size, 3, size, size, device=device)
    one = batch[:1]
    repeats = 2 if args.quick else args.repeats
    t = compare(
        {"predict": lambda: model.predict(batch), "fast map": lambda: fast_maps(model, batch)},
        device,
        repeats=repeats,
        warmup=1,
    )
    occ = compare(
        {
            "predict": lambda: model.predict(one),
            "occlusion": lambda: occlusion_maps(model, one, grid=args.grid),
        },
        device,
        repeats=max(1, repeats // 2),
        warmup=1,
    )
    fast_ratio = paired_ratio(t["fast map"], t["predict"])
    occlusion_ratio = paired_ratio(occ["occlusion"], occ["predict"])
    rows = result["tables"].setdefault("Evidence maps against plain prediction", [])
    rows.append(
        {
            "model": name,
            "classes": model.num_classes,
            "batch": batch_size,
            "predict ms/batch": t["predict"].best * 1000,
            "fast map ms/batch": t["fast map"].best * 1000,
            "fast / predict": fast_ratio,
            f"occlusion {args.grid}x{args.grid} ms/image": occ["occlusion"].best * 1000,
            "occlusion / predict (1 image)": occlusion_ratio,
        }
    )
    result["ratios"][f"fast_map_ratio[{name}]"] = fast_ratio
    result["ratios"][f"occlusion_ratio[{name}]"] = occlusion_ratio
    # One extra tower pass would double the time: the fast map must stay below that.
    add_target(result, f"fast map / predict [{name}]", fast_ratio, "<=", 2.0)


def run(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8 on CPU, 64 on CUDA)")
    p.add_argument("--repeats", type=int, default=4, help="interleaved timed repeats per path")
    p.add_argument("--grid", type=int, default=8, help="occlusion grid (cells per side)")
    args = p.parse_args(argv)
    device = setup(args)
    result = new_result("explain", args, device)
    for name in model_names(args):
        bench_model(name, args, device, result)
    result["notes"].append(
        "ratios are medians over interleaved repeats of per-repeat ratios; the fast map includes the "
        "patch-to-class cosines for every class"
    )
    return finish(result, args)


if __name__ == "__main__":
    run()
