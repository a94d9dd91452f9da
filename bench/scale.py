"""make scale: the pipeline at NIH ChestX-ray14's full size (112,120 images), simulated on this machine.

1. Builds, in a temporary folder, the tree of Kaggle's ``nih-chest-xrays/data``: ``images_001`` ..
   ``images_012/images/`` holding all 112,120 official file names (4,999, then 10,000 per folder,
   then 7,121, as Kaggle has them), ``Data_Entry_2017.csv`` (the complete official metadata),
   ``BBox_List_2017.csv``, ``train_val_list.txt`` and ``test_list.txt``. Pixels: the bundled real
   images brought to 1024 x 1024 PNG (NIH's size), every name a hard link to one of them, so the
   disk holds 557 distinct images.
2. A copy of this project whose ``data/raw`` is what the download stage leaves after unpacking
   that archive (``images/`` flat, the metadata normalized, the manifest ``images.md5``, timed), with ``data.source: kaggle-full``,
   ``split.method: official``, ``image.size: 224`` and one variant, ``cnn``, trained for
   ``train.steps_per_epoch`` steps (one epoch).
3. Runs the real stage scripts there, one process each: relabel, split, resize, features@cnn, train@cnn,
   evaluate@cnn (all 25,596 official-test images), export@cnn, report; for each, wall time, the
   peak resident memory of the stage's process (from the kernel, at exit) and of the process with
   its workers (sampled every 0.2 s), and throughput.
4. DVC at that size: ``dvc commit`` (hashes all 112,120 raw files once), then ``dvc status`` and a
   no-op ``dvc repro``, timed.
5. Resize against the decode-only rate: the same decoder on all cores (pool started before
   timing) over 4,000 of the linked files.

Writes reports/scale.json (not with --limit) and prints a table. Download itself (Kaggle's 42 GB archive) is not
simulated: the network is the limit there, and this machine has none.

    python bench/scale.py                # ~30 min on 2 cores, ~15 GB of disk while it runs
    python bench/scale.py --steps 20 --keep
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import edit_params, make_project, project_env  # noqa: E402

from cxr.data.download import write_manifest  # noqa: E402
from cxr.data.images import read_image  # noqa: E402
from cxr.data.metadata import read_metadata  # noqa: E402
from cxr.outputs import write_csv, write_json  # noqa: E402
from cxr.params import load_params  # noqa: E402
from cxr.paths import BOXES, OFFICIAL_METADATA, OFFICIAL_TEST, RAW, RAW_METADATA  # noqa: E402

KAGGLE_FOLDERS = [4999] + [10000] * 10 + [7121]   # images per images_0NN folder in nih-chest-xrays/data
SIDE = 1024
SIZE = 224
DECODE_SAMPLE = 4000
GOALS = {"peak_rss_gb": 4.0, "resize_vs_decode": 0.85, "dvc_noop_s": 10.0}


def _upscale(job: tuple[str, str]) -> None:
    src, dest = job
    Image.open(src).convert("L").resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(dest, compress_level=6)


def build_kaggle_tree(root: Path, workers: int, limit: int | None = None) -> tuple[Path, list[str]]:
    """Kaggle's nih-chest-xrays/data tree under ``root/kaggle``; returns it and the image names.
    ``limit``: only the first that many names (a quick check of this script, not a measurement)."""
    meta = pd.read_csv(ROOT / OFFICIAL_METADATA, dtype=str).sort_values("Image Index")[:limit]
    names = list(meta["Image Index"])
    sources = sorted((ROOT / "data" / "sample" / "images").glob("*.png"))
    distinct = root / "distinct"
    distinct.mkdir(parents=True)
    jobs = [(str(p), str(distinct / p.name)) for p in sources]
    with get_context("forkserver").Pool(workers) as pool:
        pool.map(_upscale, jobs, chunksize=8)
    tree = root / "kaggle"
    start = 0
    for folder, count in enumerate(KAGGLE_FOLDERS, 1):
        images = tree / f"images_{folder:03d}" / "images"
        images.mkdir(parents=True)
        for i, name in enumerate(names[start:start + count], start):
            os.link(jobs[i % len(jobs)][1], images / name)
        start += count
    meta.to_csv(tree / "Data_Entry_2017.csv", index=False)
    pd.read_csv(ROOT / BOXES).to_csv(tree / "BBox_List_2017.csv", index=False)
    for name in ("test_list.txt", "train_val_list.txt"):
        (tree / name).write_bytes(_gunzip(ROOT / "data" / "sample" / "meta" / f"{name}.gz"))
    return tree, names


def _gunzip(path: Path) -> bytes:
    import gzip
    return gzip.decompress(path.read_bytes())


def place_raw(tree: Path, project: Path) -> tuple[int, float]:
    """What the download stage leaves after unpacking the archive: images flat, metadata normalized,
    the manifest (its md5 of every image, timed: the one part of download this machine can measure)."""
    images = project / RAW / "images"
    images.mkdir(parents=True)
    count = 0
    for path in sorted(tree.glob("images_*/images/*.png")):
        os.link(path, images / path.name)
        count += 1
    write_csv(project / RAW_METADATA, read_metadata(tree / "Data_Entry_2017.csv"))
    started = time.perf_counter()
    write_manifest(project / RAW)
    return count, round(time.perf_counter() - started, 1)


def scale_params(steps: int):
    def edit(p: dict) -> None:
        p["data"]["source"] = "kaggle-full"
        p["split"]["method"] = "official"
        p["image"]["size"] = SIZE
        p["train"]["steps_per_epoch"] = steps
        p["models"] = {"cnn": {**p["models"]["cnn"], "epochs": 1}}
    return edit


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_stage(cmd: list[str], project: Path) -> dict:
    """Run one stage script; wall time, its own peak RSS (kernel), and peak RSS with its workers (sampled)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=project, env=project_env(project), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak_tree, done = 0, threading.Event()

    def sample():
        nonlocal peak_tree
        watched = psutil.Process(proc.pid)
        while not done.wait(0.2):
            try:
                peak_tree = max(peak_tree, _tree_rss(watched))
            except psutil.Error:
                return
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
            "peak_rss_with_workers_gb": round(max(peak_tree, usage.ru_maxrss * 1024) / 2**30, 2),
            "says": out.strip().splitlines()[-1] if out.strip() else ""}


def timed(cmd: list[str], project: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, env=project_env(project), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - started, 1)


def _decode(path: str) -> int:
    return read_image(path).size


def decode_only_rate(paths: list[str], workers: int) -> float:
    """Images per second decoding only (the reader resize uses), on all cores, pool started first."""
    with get_context("forkserver").Pool(workers) as pool:
        pool.map(_decode, paths[:workers * 4])   # warm: processes started, modules imported
        started = time.perf_counter()
        pool.map(_decode, paths, chunksize=32)
        return len(paths) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="train.steps_per_epoch of the one training epoch")
    ap.add_argument("--work", default=None, help="folder for the temporary tree (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary tree and project")
    ap.add_argument("--limit", type=int, default=None, help="only the first N image names (to check this script)")
    args = ap.parse_args()
    workers = len(os.sched_getaffinity(0))
    root = Path(tempfile.mkdtemp(prefix="cxr-scale-", dir=args.work))
    report: dict = {"machine": {"cores": workers, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
                    "image_size": SIZE, "steps_per_epoch": args.steps, "goals": GOALS, "stages": {}}
    try:
        started = time.perf_counter()
        tree, names = build_kaggle_tree(root, workers, args.limit)
        project = make_project(root / "project")
        edit_params(project, scale_params(args.steps))
        # Links, as DVC advises for large data: with its default (copy), `dvc commit` writes a second
        # copy of every one of the 112,120 raw files (this machine's disk ran out so).
        subprocess.run(["dvc", "config", "--local", "cache.type", "hardlink,symlink,copy"], cwd=project,
                       env=project_env(project), check=True, capture_output=True)
        placed, manifest_s = place_raw(tree, project)
        report["tree"] = {"images": placed, "limit": args.limit, "distinct_files": len(list((root / "distinct").iterdir())),
                          "seconds": round(time.perf_counter() - started, 1)}
        report["download_manifest"] = {"seconds": manifest_s, "images_per_s": round(placed / manifest_s, 1)}
        print(f"tree: {placed} names over {report['tree']['distinct_files']} distinct 1024-px PNGs, "
              f"{report['tree']['seconds']} s; download's manifest (md5 of every image) {manifest_s} s", flush=True)

        test = set(_gunzip(ROOT / OFFICIAL_TEST).decode().split())
        stages = [("relabel", ["stages/relabel.py"]), ("split", ["stages/split.py"]),
                  ("resize", ["stages/resize.py"]), ("features@cnn", ["stages/features.py", "cnn"]),
                  ("train@cnn", ["stages/train.py", "cnn"]),
                  ("evaluate@cnn", ["stages/evaluate.py", "cnn"]), ("export@cnn", ["stages/export.py", "cnn"]),
                  ("report", ["stages/report.py"])]
        for name, cmd in stages:
            result = run_stage([sys.executable, *cmd], project)
            report["stages"][name] = result
            print(f"{name}: {result['seconds']} s, peak RSS {result['peak_rss_gb']} GB "
                  f"({result['peak_rss_with_workers_gb']} GB with workers): {result['says']}", flush=True)
        counts = pd.read_csv(project / "data" / "splits.csv")["split"].value_counts().to_dict()
        used = load_params(project / "params.yaml")
        timing = json.loads((project / "reports" / "timings" / "train" / "cnn.json").read_text())
        images = {"relabel": placed, "split": placed, "resize": placed,
                  "train@cnn": args.steps * used.train.batch_size, "evaluate@cnn": counts["val"] + counts["test"],
                  "export@cnn": (1 + len(used.export.tflite)) * (counts["val"] + counts["test"])}
        what = {"train@cnn": "training images (steps x batch); the stage also scores all val images",
                "evaluate@cnn": "val + test images predicted", "export@cnn": "val + test images run by Keras "
                f"and {len(used.export.tflite)} TFLite formats"}
        for name, n in images.items():
            stage = report["stages"][name]
            stage["images"] = n
            stage["images_per_s"] = round(n / stage["seconds"], 1)
            if name in what:
                stage["images_are"] = what[name]
        report["stages"]["train@cnn"]["fit_images_per_s"] = timing["images_per_second"]
        report["splits"] = counts
        assert counts["test"] == len(test & set(names)), (counts, len(test))

        report["resize_vs_decode"] = {"decode_only_images_per_s": round(decode_only_rate(
            [str(project / RAW / "images" / n) for n in names[:DECODE_SAMPLE]], workers), 1)}
        report["resize_vs_decode"]["resize_images_per_s"] = report["stages"]["resize"]["images_per_s"]
        report["resize_vs_decode"]["ratio"] = round(
            report["stages"]["resize"]["images_per_s"] / report["resize_vs_decode"]["decode_only_images_per_s"], 3)

        # Record every stage as run (DVC hashes all its deps and outs once), then commit that to git.
        report["dvc"] = {"commit_s": timed(["dvc", "commit", "--force"], project)}
        for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "scale"]):
            subprocess.run(cmd, cwd=project, check=True, capture_output=True)
        report["dvc"] |= {"status_s": timed(["dvc", "status"], project),
                         "status_again_s": timed(["dvc", "status"], project),
                         "noop_repro_s": timed(["dvc", "repro"], project)}
        status = subprocess.run(["dvc", "status"], cwd=project, env=project_env(project), capture_output=True,
                                text=True, check=True).stdout.strip()
        report["dvc"]["up_to_date"] = "up to date" in status
        print(f"dvc: {report['dvc']}", flush=True)
        report["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.limit is None:   # a --limit run checks this script; it does not replace the measurement
        write_json(ROOT / "reports" / "scale.json", report)
    print_table(report)


def print_table(report: dict) -> None:
    print(f"\n{'stage':<14}{'seconds':>9}{'peak RSS GB':>13}{'+workers GB':>13}{'images/s':>10}")
    for name, s in report["stages"].items():
        print(f"{name:<14}{s['seconds']:>9}{s['peak_rss_gb']:>13}{s['peak_rss_with_workers_gb']:>13}"
              f"{s.get('images_per_s', ''):>10}")
    r = report["resize_vs_decode"]
    print(f"resize {r['resize_images_per_s']} img/s vs decode-only {r['decode_only_images_per_s']} img/s "
          f"on {report['machine']['cores']} cores = {r['ratio']}x (goal {GOALS['resize_vs_decode']}x)")
    print(f"download's manifest: {report['download_manifest']}")
    print(f"dvc at {report['tree']['images']} raw files: {report['dvc']}")


if __name__ == "__main__":
    main()
