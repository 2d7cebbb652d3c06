"""The evidence-map figures of the README, on single-object scenes of the synthetic world.

For each scene: does the map put more of its mass inside the object's disc than a uniform map would, and
how well do the fast and occlusion maps rank the cells alike (Spearman, the fast map average-pooled to the
occlusion grid)? Usage, from the repository root:
python tools/explain_world_figures.py [--scenes 200] [--seed 5150]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from capnet.config import GraphConfig, ModelConfig  # noqa: E402
from capnet.explain import fast_maps, mass_inside, occlusion_maps  # noqa: E402
from capnet.model import CapNet  # noqa: E402
from capnet.world import load_synth_backbone  # noqa: E402
from capnet.world.pretrain import scene_tensor  # noqa: E402
from capnet.world.scenes import SCENE_CLASSES, SCENE_TEMPLATES, SceneSpec, generate_scene  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=5150)
    args = p.parse_args(argv)
    backbone = load_synth_backbone()
    config = ModelConfig(graph=GraphConfig(templates=list(SCENE_TEMPLATES)))
    model = CapNet(backbone, SCENE_CLASSES, config, zero_shot=True).eval()
    images, objects = [], []
    for i in range(args.scenes):
        rng = np.random.default_rng([args.seed, i])
        image, _, _, objs = generate_scene(rng, SceneSpec(count_probs=(1.0,)), return_objects=True)
        images.append(image)
        objects.append(objs[0])
    visual = backbone.model.visual
    x = scene_tensor(images, visual.image_mean, visual.image_std, backbone.image_size)
    size = x.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    discs = [(xx - o.x) ** 2 + (yy - o.y) ** 2 <= o.radius**2 for o in objects]
    area = np.array([d.mean() for d in discs])
    print(f"{args.scenes} single-object scenes, stream {args.seed}; mean object area {area.mean():.3f}")

    def beats_uniform(maps: torch.Tensor) -> str:
        mass = np.array([mass_inside(maps[i, o.cls].numpy(), discs[i]) for i, o in enumerate(objects)])
        return f"more mass than uniform on {np.mean(mass > area):.1%} (mean share {mass.mean():.3f})"

    occluded = {g: occlusion_maps(model, x, grid=g)[0] for g in (4, 8)}
    for g, maps in occluded.items():
        print(f"occlusion {g}x{g}: {beats_uniform(maps)}")
    for mode in ("value", "maskclip"):
        for relative in (False, True):
            fast, _ = fast_maps(model, x, mode=mode, relative=relative)
            line = f"fast mode={mode} relative={relative}: {beats_uniform(fast)}"
            for g, maps in occluded.items():
                pooled = F.adaptive_avg_pool2d(fast, g)
                rho = [
                    spearmanr(pooled[i, o.cls].numpy().ravel(), maps[i, o.cls].numpy().ravel()).statistic
                    for i, o in enumerate(objects)
                ]
                line += f"; Spearman vs occlusion {g}x{g}: {np.nanmean(rho):.3f}"
            print(line)


if __name__ == "__main__":
    main()
