"""Constants shared by tests."""

from pathlib import Path

LTSPLITS = Path(__file__).resolve().parents[2] / "shared" / "ltsplits"
VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
ODD_NAMES = [
    "traffic light",
    "hair drier",
    "tvmonitor",
    "person",
    "a very long and unusual class name indeed",
]
