"""Stand-ins for the real archives (same inner layout, a few images each) and manifests pointing at them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

from capnet.data import download
from capnet.world.squares import write_coco, write_voc
from tests.fileserver import FileServer

# `--set` overrides that make a benchmark config a one-epoch run of the tiny random backbone on the CPU.
TINY_RUN = [
    "model.backbone={name: capnet-tiny, pretrained: null, device: cpu}",
    "train.epochs=1",
    "train.batch_size=4",
    "train.cache_dir=''",
    "train.out_dir=runs",
    "data.num_workers=0",
    "eval.tta=false",
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(base: Path, members: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in members:
            tar.add(base / name, arcname=name)
    return buffer.getvalue()


def build_voc(src: Path) -> dict:
    """VOC2012 trainval and VOC2007 test tars laid out like the real ones, plus a split id file."""
    write_voc(src, n_train=16, n_test=8)
    v12, v07 = src / "VOCdevkit" / "VOC2012", src / "VOCdevkit" / "VOC2007"
    for year_dir in (v12, v07):  # what the benchmark does not use, and must not be extracted
        (year_dir / "SegmentationClass").mkdir()
        (year_dir / "SegmentationClass" / "x.png").write_bytes(b"not used")
    (v12 / "ImageSets" / "Main" / "train.txt").write_text("2012_000001\n")
    pool = (v12 / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    split = pool[::2]  # 8 of the 16 pool images form the "long-tailed" training set
    ids_file = "\n".join(split).encode() + b"\n"
    names12 = sorted(str(p.relative_to(src)) for p in v12.rglob("*") if p.is_file())
    names07 = sorted(str(p.relative_to(src)) for p in v07.rglob("*") if p.is_file())
    return {
        "src": src,
        "split": split,
        "files": {
            "ltsplits/voc-lt/img_id.txt": ids_file,
            "downloads/VOCtrainval_11-May-2012.tar": _tar(src, names12),
            "downloads/VOCtest_06-Nov-2007.tar": _tar(src, names07),
        },
    }


def voc_manifest(
    tmp_path: Path, voc: dict, server: FileServer, urls: dict[str, list[str]] | None = None
) -> Path:
    """The shipped VOC-LT manifest with the local server's URLs and the stand-ins' sizes and checksums."""
    data = json.loads((download.MANIFEST_DIR / "voc-lt.json").read_text())
    for entry in data["files"]:
        content = voc["files"][entry["path"]]
        name = "/" + Path(entry["path"]).name
        server.files[name] = content
        entry["urls"] = (urls or {}).get(entry["path"], [server.url + name])
        entry["sha256"], entry["bytes"] = sha256(content), len(content)
    path = tmp_path / "voc-lt.json"
    path.write_text(json.dumps(data))
    return path


def coco_manifest(tmp_path: Path, server: FileServer) -> tuple[Path, Path, list[str]]:
    """COCO 2017 stand-ins: the annotation and val zips, single train images served at their coco_url."""
    src = tmp_path / "coco-src"
    write_coco(src, n_train=12, n_test=6)
    train_json = src / "annotations" / "instances_train2017.json"
    doc = json.loads(train_json.read_text())
    for info in doc["images"]:
        info["coco_url"] = f"{server.url}/train2017/{info['file_name']}"
        server.files[f"/train2017/{info['file_name']}"] = (src / "train2017" / info["file_name"]).read_bytes()
    train_json.write_text(json.dumps(doc))
    (src / "annotations" / "captions_train2017.json").write_text("{}")  # in the real zip, not used
    split = [str(info["id"]) for info in doc["images"][1::2]]  # unpadded, as in img_id.pkl
    contents = {"ltsplits/coco-lt/img_id.pkl": ("\n".join(split) + "\n").encode()}
    for name, folder in (("annotations_trainval2017.zip", "annotations"), ("val2017.zip", "val2017")):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zipped:
            for path in sorted((src / folder).iterdir()):
                zipped.write(path, f"{folder}/{path.name}")
        contents[f"downloads/{name}"] = buffer.getvalue()
    data = json.loads((download.MANIFEST_DIR / "coco-lt.json").read_text())
    for entry in data["files"]:
        content = contents[entry["path"]]
        server.files["/" + Path(entry["path"]).name] = content
        entry["urls"] = [server.url + "/" + Path(entry["path"]).name]
        entry["sha256"], entry["bytes"] = sha256(content), len(content)
    data["images"].update(mirrors=[], count=len(split))
    path = tmp_path / "coco-lt.json"
    path.write_text(json.dumps(data))
    return path, src, split
