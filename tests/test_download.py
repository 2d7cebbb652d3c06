"""`capnet data fetch` against a local HTTP server: stand-in archives with the real inner layout."""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from capnet import cli
from capnet.config import load_run_config
from capnet.data import download, read_voc
from capnet.data.download import DownloadError, FileEntry, Options, fetch_file, load_manifest
from capnet.data.sources import load_split
from tests.common import LTSPLITS
from tests.fileserver import FileServer
from tests.standins import TINY_RUN, build_voc, coco_manifest, sha256, voc_manifest

ROOT = Path(__file__).resolve().parents[1]
NOTES = LTSPLITS.parent / "notes"
FAST = Options(retries=0, backoff=0.0, progress=False)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> dict:
    return build_voc(tmp_path_factory.mktemp("voc-src"))


def one_file(tmp_path: Path, server: FileServer, content: bytes, urls: list[str] | None = None) -> FileEntry:
    server.files["/blob.bin"] = content
    return FileEntry("downloads/blob.bin", urls or [server.url + "/blob.bin"], sha256(content), len(content))


def test_clean_fetch_gives_the_layout_the_voc_lt_config_trains_on(tmp_path, voc, monkeypatch, capsys):
    with FileServer() as server:
        manifest = voc_manifest(tmp_path, voc, server)
        monkeypatch.chdir(tmp_path)  # the config's paths (data/VOCdevkit, data/ltsplits/...) are relative
        assert cli.main(["data", "fetch", "voc-lt", "--manifest", str(manifest), "--root", "data"]) == 0
    data = tmp_path / "data"
    for path, content in voc["files"].items():
        assert (data / path).read_bytes() == content
    v12, v07 = data / "VOCdevkit" / "VOC2012", data / "VOCdevkit" / "VOC2007"
    assert sorted(p.stem for p in (v12 / "JPEGImages").iterdir()) == sorted(voc["split"])
    assert sorted(p.stem for p in (v12 / "Annotations").iterdir()) == sorted(voc["split"])
    assert (v12 / "ImageSets" / "Main" / "trainval.txt").read_text().split() == voc["split"]
    assert not (v12 / "SegmentationClass").exists() and not (v07 / "SegmentationClass").exists()
    assert not (v12 / "ImageSets" / "Main" / "train.txt").exists()
    src07 = voc["src"] / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        assert sorted(p.name for p in (v07 / sub).iterdir()) == sorted(
            p.name for p in (src07 / sub).iterdir()
        )
    assert not list(data.rglob("*.part")) and not (data / ".capnet" / "staging").exists()
    # Labels come from the XML: the same as reading the source tree, restricted to the split.
    source = read_voc(voc["src"] / "VOCdevkit", "2012", "trainval").select_ids(voc["split"])
    fetched = read_voc(data / "VOCdevkit", "2012", "trainval")
    assert fetched.image_ids == source.image_ids and (fetched.labels == source.labels).all()

    overrides = [
        *TINY_RUN,
        # The config's own paths are taken from configs/ (the repository's data/); --set ones from here.
        "data.root=data/VOCdevkit",
        "data.train_ids=data/ltsplits/voc-lt/img_id.txt",
    ]
    args = ["train", "--config", str(ROOT / "configs" / "voc_lt.yaml")]
    assert cli.main(args + [a for o in overrides for a in ("--set", o)]) == 0
    report = json.loads((tmp_path / "runs" / "voc_lt" / "report.json").read_text())
    assert report["num_images"] == 8  # the VOC2007 stand-in test set


def test_a_rerun_downloads_nothing(tmp_path, voc, capsys):
    with FileServer() as server:
        manifest = voc_manifest(tmp_path, voc, server)
        argv = ["data", "fetch", "voc-lt", "--manifest", str(manifest), "--root", str(tmp_path / "d")]
        assert cli.main(argv) == 0
        assert len(server.requests) == 3
        capsys.readouterr()
        assert cli.main(argv) == 0
        assert len(server.requests) == 3
        assert "nothing to do" in capsys.readouterr().out
        # With the archives deleted to save space, the extracted files still count as done.
        for tar in (tmp_path / "d" / "downloads").glob("*.tar"):
            tar.unlink()
        assert cli.main(argv) == 0 and len(server.requests) == 3
        # A lost extracted file brings its archive back.
        (tmp_path / "d" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").unlink()
        assert cli.main(argv) == 0
        assert [p for p, _ in server.requests[3:]] == ["/VOCtest_06-Nov-2007.tar"]
        assert (tmp_path / "d" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file()


def test_a_cut_transfer_resumes_where_it_stopped(tmp_path, voc, capsys):
    content = voc["files"]["downloads/VOCtest_06-Nov-2007.tar"]
    with FileServer() as server:
        entry = one_file(tmp_path, server, content)
        server.cut["/blob.bin"] = 10_000
        with pytest.raises(DownloadError, match="cut short"):
            fetch_file(entry, tmp_path, options=FAST)
        part = tmp_path / "downloads" / "blob.bin.part"
        assert part.stat().st_size == 10_000 and not (tmp_path / "downloads" / "blob.bin").exists()
        assert fetch_file(entry, tmp_path, options=FAST)
        assert server.requests[-1] == ("/blob.bin", "bytes=10000-")
        assert (tmp_path / "downloads" / "blob.bin").read_bytes() == content and not part.exists()
        # Within one run: the retry round resumes by itself.
        (tmp_path / "downloads" / "blob.bin").unlink()
        server.cut["/blob.bin"] = 777
        assert fetch_file(entry, tmp_path, options=Options(retries=1, backoff=0.0, progress=False))
        assert server.requests[-2:] == [("/blob.bin", None), ("/blob.bin", "bytes=777-")]
        assert (tmp_path / "downloads" / "blob.bin").read_bytes() == content


def test_a_server_without_range_support_restarts_the_file(tmp_path, voc):
    content = voc["files"]["downloads/VOCtrainval_11-May-2012.tar"]
    with FileServer() as server:
        entry = one_file(tmp_path, server, content)
        server.no_range.add("/blob.bin")
        server.cut["/blob.bin"] = 5_000
        with pytest.raises(DownloadError):
            fetch_file(entry, tmp_path, options=FAST)
        assert fetch_file(entry, tmp_path, options=FAST)
        assert server.requests[-1] == ("/blob.bin", "bytes=5000-")  # asked, answered with the whole file
    assert (tmp_path / "downloads" / "blob.bin").read_bytes() == content


def test_a_corrupted_byte_exits_2_and_leaves_nothing(tmp_path, voc, capsys):
    with FileServer() as server:
        manifest = voc_manifest(tmp_path, voc, server)
        good = server.files["/VOCtest_06-Nov-2007.tar"]
        server.files["/VOCtest_06-Nov-2007.tar"] = good[:700] + bytes([good[700] ^ 1]) + good[701:]
        argv = ["data", "fetch", "voc-lt", "--manifest", str(manifest), "--root", str(tmp_path / "d")]
        assert cli.main([*argv, "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("capnet: error: checksum mismatch")
    downloads = tmp_path / "d" / "downloads"
    assert not (downloads / "VOCtest_06-Nov-2007.tar").exists()
    assert not (downloads / "VOCtest_06-Nov-2007.tar.part").exists()
    assert not (tmp_path / "d" / "VOCdevkit" / "VOC2007").exists()


@pytest.mark.parametrize("code", [404, 500])
def test_a_failing_first_mirror_falls_through_to_the_next(tmp_path, voc, code):
    content = voc["files"]["ltsplits/voc-lt/img_id.txt"]
    with FileServer() as server:
        server.fail["/first/blob.bin"] = [code]
        server.files["/first/blob.bin"] = b"never served"
        entry = one_file(
            tmp_path, server, content, [server.url + "/first/blob.bin", server.url + "/blob.bin"]
        )
        assert fetch_file(entry, tmp_path, options=FAST)
        assert [p for p, _ in server.requests] == ["/first/blob.bin", "/blob.bin"]
    assert (tmp_path / "downloads" / "blob.bin").read_bytes() == content


def test_mirror_option_is_tried_first(tmp_path, voc, capsys):
    with FileServer() as server:
        manifest = voc_manifest(
            tmp_path, voc, server, urls={"ltsplits/voc-lt/img_id.txt": ["http://127.0.0.1:9/x"]}
        )
        server.files["/m/img_id.txt"] = voc["files"]["ltsplits/voc-lt/img_id.txt"]
        argv = ["data", "fetch", "voc-lt", "--manifest", str(manifest), "--root", str(tmp_path / "d")]
        assert cli.main([*argv, "--mirror", server.url + "/m/"]) == 0
        assert server.requests[0] == ("/m/img_id.txt", None)


def test_dry_run_opens_no_connection(tmp_path, voc, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run opened a connection")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with FileServer() as server:
        manifest = voc_manifest(tmp_path, voc, server)
        argv = ["data", "fetch", "voc-lt", "--manifest", str(manifest), "--root", str(tmp_path / "d")]
        assert cli.main([*argv, "--dry-run", "--format", "json"]) == 0
        assert server.requests == []
    planned = json.loads(capsys.readouterr().out)
    assert planned["download_bytes"] == sum(len(c) for c in voc["files"].values())
    assert [f["path"] for f in planned["files"]] == list(voc["files"])
    assert all(f["state"] == "missing" and f["sources"][0].startswith(server.url) for f in planned["files"])
    assert not (tmp_path / "d").exists()


def test_shipped_dry_run_names_the_real_sources(capsys, tmp_path):
    assert cli.main(["data", "fetch", "coco-lt", "--root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s3.amazonaws.com/images.cocodataset.org/zips/val2017.zip" in out and "1909 single images" in out
    assert "train2017.zip" not in out  # never the 19 GB archive


def test_user_errors_are_one_line_with_exit_2(tmp_path, voc, monkeypatch, capsys):
    with FileServer() as server:
        manifest = str(voc_manifest(tmp_path, voc, server))
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        cases = {
            "cannot write to": ["--root", str(blocker)],
            "no manifest": ["--root", str(tmp_path / "d"), "--manifest", str(tmp_path / "none.json")],
        }
        for expected, extra in cases.items():
            assert cli.main(["data", "fetch", "voc-lt", "--manifest", manifest, *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and expected in err, err

        monkeypatch.setattr(download.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 90, 10))
        assert (
            cli.main(["data", "fetch", "voc-lt", "--manifest", manifest, "--root", str(tmp_path / "d")]) == 2
        )
        assert "not enough free space" in capsys.readouterr().err
        assert server.requests == []
    monkeypatch.undo()
    # Unreachable: nothing listens on the port any more.
    assert cli.main(["data", "fetch", "voc-lt", "--manifest", manifest, "--root", str(tmp_path / "e"),
                     "--retries", "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download ltsplits/voc-lt/img_id.txt from any source" in err


def test_a_full_disk_mid_download_is_one_line_and_keeps_the_part(tmp_path, voc, monkeypatch):
    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    with FileServer() as server:
        entry = one_file(tmp_path, server, voc["files"]["downloads/VOCtest_06-Nov-2007.tar"])
        monkeypatch.setattr(download, "open", lambda *a, **k: Full(), raising=False)
        with pytest.raises(DownloadError, match="no space left on the device"):
            fetch_file(entry, tmp_path, options=FAST)
    assert not (tmp_path / "downloads" / "blob.bin").exists()


def test_unsafe_manifest_paths_are_refused(tmp_path):
    data = json.loads((download.MANIFEST_DIR / "voc-lt.json").read_text())
    data["files"][0]["path"] = "../../etc/x"
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(DownloadError, match="not a relative path"):
        load_manifest(tmp_path / "m.json")


def _markdown_checksums(text: str) -> dict[str, tuple[int, str, str | None]]:
    """{file name: (bytes, sha256, md5 or None)} from the tables of DATA-SOURCES.md."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        digests = [c for c in cells if re.fullmatch(r"[0-9a-f]{64}", c)]
        md5 = next((c for c in cells if re.fullmatch(r"[0-9a-f]{32}", c)), None)
        if len(cells) >= 3 and digests and re.fullmatch(r"[\d,]+", cells[1]):
            name = cells[0].split(" (")[0]
            found[name] = (int(cells[1].replace(",", "")), digests[0], md5)
    return found


def test_shipped_manifests_carry_the_checksums_of_data_sources():
    notes = NOTES / "DATA-SOURCES.md"
    if not notes.is_file():
        pytest.skip(f"{notes} is not available")
    table = _markdown_checksums(notes.read_text())
    assert len(table) >= 11
    checked = 0
    for name in ("voc-lt", "coco-lt"):
        for entry in load_manifest(name).files:
            url = entry.urls[0]
            key = next(k for k in table if url.endswith("/" + k))
            assert (entry.bytes, entry.sha256, entry.md5) == table[key], entry.path
            checked += 1
    assert checked == 6 and sum(1 for *_, md5 in table.values() if md5) == 5


def test_shipped_split_checksums_match_the_official_files():
    """An independent check: hash the official split files themselves."""
    if not (LTSPLITS / "voc-lt" / "img_id.txt").is_file():
        pytest.skip(f"official split files not available at {LTSPLITS}")
    for name, local in (("voc-lt", "voc-lt/img_id.txt"), ("coco-lt", "coco-lt/img_id.pkl")):
        entry = load_manifest(name).files[0]
        content = (LTSPLITS / local).read_bytes()
        assert (entry.bytes, entry.sha256) == (len(content), sha256(content))


def test_coco_lt_fetches_single_images_checked_against_their_annotations(tmp_path, monkeypatch, capsys):
    with FileServer() as server:
        manifest, src, split = coco_manifest(tmp_path, server)
        monkeypatch.chdir(tmp_path)
        argv = ["data", "fetch", "coco-lt", "--manifest", str(manifest), "--root", "data", "--retries", "0"]
        assert cli.main(argv) == 0
        n = len(server.requests)
        assert n == 3 + len(split)
        assert not any("train2017.zip" in path for path, _ in server.requests)
        monkeypatch.setattr(
            download, "_wanted_images", lambda *a: pytest.fail("the rerun read the annotations")
        )
        assert cli.main(argv) == 0 and len(server.requests) == n  # the rerun downloads nothing
    coco = tmp_path / "data" / "coco"
    assert sorted(p.name for p in (coco / "annotations").iterdir()) == [
        "instances_train2017.json",
        "instances_val2017.json",
    ]
    assert sorted(p.name for p in (coco / "val2017").iterdir()) == sorted(
        p.name for p in (src / "val2017").iterdir()
    )
    fetched = sorted((coco / "train2017").iterdir())
    assert [int(p.stem) for p in fetched] == sorted(int(i) for i in split)
    assert all(p.read_bytes() == (src / "train2017" / p.name).read_bytes() for p in fetched)
    sets = ["data.root=data/coco", "data.train_ids=data/ltsplits/coco-lt/img_id.pkl"]  # from here
    cfg = load_run_config(str(ROOT / "configs" / "coco_lt.yaml"), sets)
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    assert sorted(int(i) for i in train.image_ids) == sorted(int(i) for i in split)
    assert all(p.is_file() for p in train.paths) and len(test) == 6


def test_a_coco_image_that_does_not_match_its_annotation_is_refused(tmp_path, capsys):
    with FileServer() as server:
        manifest, src, split = coco_manifest(tmp_path, server)
        bad = f"{int(split[0]):012d}.jpg"
        buffer = io.BytesIO()
        Image.new("RGB", (40, 48), "red").save(buffer, "JPEG")  # the annotation says 48x48
        server.files[f"/train2017/{bad}"] = buffer.getvalue()
        argv = ["data", "fetch", "coco-lt", "--manifest", str(manifest), "--root", str(tmp_path / "d")]
        assert cli.main([*argv, "--retries", "0"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"could not download the image {bad}" in err and "40x48" in err
        assert not (tmp_path / "d" / "coco" / "train2017" / bad).exists()
        server.files[f"/train2017/{bad}"] = b"\xff\xd8 truncated"
        assert cli.main([*argv, "--retries", "0"]) == 2
        assert "does not decode" in capsys.readouterr().err
        assert not list((tmp_path / "d" / "coco" / "train2017").glob("*.part"))


def test_a_refused_range_drops_the_partial_file_and_starts_over(tmp_path, voc):
    content = voc["files"]["downloads/VOCtest_06-Nov-2007.tar"]
    with FileServer() as server:
        entry = one_file(tmp_path, server, content)
        (tmp_path / "downloads").mkdir()
        (tmp_path / "downloads" / "blob.bin.part").write_bytes(b"x" * 100)  # left by another file's run
        server.fail["/blob.bin"] = [416]
        assert fetch_file(entry, tmp_path, options=Options(retries=1, backoff=0.0, progress=False))
        assert server.requests == [("/blob.bin", "bytes=100-"), ("/blob.bin", None)]
    assert (tmp_path / "downloads" / "blob.bin").read_bytes() == content
