"""The synthetic world: captioned scenes, the tiny CLIP pretrained on them, Synth-LT and its ablation.

It stands in for web-pretrained CLIP and real long-tailed data on machines that can download neither.
It is research code built on top of the library (``capnet.world`` -> ``capnet.engine`` -> ``capnet.model``);
nothing in the library imports it.
"""

from capnet.world.pretrain import load_synth_backbone
from capnet.world.scenes import SCENE_CLASSES, scene_batch, write_scenes
from capnet.world.squares import write_csv_dataset

__all__ = ["SCENE_CLASSES", "load_synth_backbone", "scene_batch", "write_csv_dataset", "write_scenes"]
