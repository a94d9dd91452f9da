"""Benchmarks: the pipeline's speed beside the usual alternatives, measured in the same run.

Prints a table and writes reports/bench.json. Figures, not assertions: this
machine is shared, so each timing is a median of several runs and every
comparison is a ratio measured here, now, on the same images.

    python bench/run.py            # everything (~20 min on 2 cores; the end-to-end run dominates)
    python bench/run.py --quick    # skip the end-to-end pipeline run (figures 4, 5, 7-train)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import make_project, project_env  # noqa: E402

from cxr.data.cache import build_cache  # noqa: E402
from cxr.data.images import read_image  # noqa: E402
from cxr.params import load_params  # noqa: E402

TARGETS = {"resize_vs_single": 1.8, "resize_vs_decode_limit": 0.85, "feed_vs_keras": 5.0,
           "input_stall": 1.10, "noop_repro_s": 2.0, "e2e_s": 15 * 60, "int8_size_ratio": 0.27}


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tiled_images(folder: Path, count: int, side: int | None) -> list[Path]:
    """``count`` files made by repeating the 557 real images; upscaled to ``side`` if given
    (to mimic full-size 1024x1024 NIH PNGs, whose decode dominates resize)."""
    sources = sorted((ROOT / "data" / "sample" / "images").glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        dest = folder / f"{i:05d}_{src.name}"
        if side:
            Image.open(src).resize((side, side), Image.Resampling.BICUBIC).save(dest, compress_level=6)
        else:
            shutil.copy(src, dest)
        paths.append(dest)
    return paths


def _decode_only(path):
    return read_image(path).shape


# --- 1. resize cache throughput ---

def bench_resize(work: Path, workers: int, size: int) -> dict:
    paths = tiled_images(work / "full_size", 400, 1024)
    n = len(paths)
    parallel = median_time(lambda: build_cache(paths, size, workers, work / "cache", progress=False), 3)

    def single():
        for p in paths:
            np.asarray(Image.open(p).convert("L").resize((size, size), Image.Resampling.LANCZOS))
    single_t = median_time(single, 3)

    def decode_all_cores():
        with get_context("forkserver").Pool(workers) as pool:
            list(pool.imap(_decode_only, [str(p) for p in paths], chunksize=8))
    decode_t = median_time(decode_all_cores, 3)
    return {"images": n, "source": "557 real images tiled to 400 and upscaled to 1024x1024 PNG",
            "cache_images_per_s": n / parallel, "single_process_pillow_images_per_s": n / single_t,
            "decode_only_all_cores_images_per_s": n / decode_t,
            "vs_single": single_t / parallel, "vs_decode_limit": decode_t / parallel, "workers": workers}


# --- 2. training feed ---

def bench_feed(work: Path, size: int, batch: int) -> dict:
    import keras
    import tensorflow as tf

    from cxr.data.dataset import Subset
    from cxr.train import augmentation, make_dataset

    params = load_params(ROOT / "params.yaml")
    folder = work / "feed" / "all"
    paths = tiled_images(folder, 2000, None)
    build_cache(paths, size, len(os.sched_getaffinity(0)), work / "feed_cache", progress=False)
    pixels = np.load(work / "feed_cache" / "images.npy", mmap_mode="r")
    subset = Subset(names=np.array([p.name for p in paths]), rows=np.arange(len(paths)),
                    y=np.zeros((len(paths), 14), np.float32), patients=np.arange(len(paths)))
    ours = make_dataset(pixels, subset, batch, shuffle=True, seed=0, augment=augmentation(params.train.augment, 0))

    aug = augmentation(params.train.augment, 0)
    theirs = keras.utils.image_dataset_from_directory(
        work / "feed", labels=None, color_mode="grayscale", image_size=(size, size), batch_size=batch,
        shuffle=True, seed=0, interpolation="area")
    theirs = theirs.map(lambda x: aug(x, training=True)).prefetch(tf.data.AUTOTUNE)

    def drain(ds):
        return lambda: sum(1 for _ in ds)
    ours_t, theirs_t = median_time(drain(ours), 3), median_time(drain(theirs), 3)
    n = len(paths)
    return {"images": n, "source": "557 real PNGs tiled to 2000 (256x256)", "batch": batch,
            "ours_images_per_s": n / ours_t, "image_dataset_from_directory_images_per_s": n / theirs_t,
            "ratio": theirs_t / ours_t}


# --- 3. input stall ---

def bench_stall(size: int, batch: int) -> dict:
    import keras

    from cxr.data.dataset import load_dataset
    from cxr.models import MODELS, build_model
    from cxr.train import augmentation, make_dataset

    params = load_params(ROOT / "params.yaml")
    data = load_dataset(ROOT / "data/cache", ROOT / "data/labels.csv", ROOT / "data/splits.csv",
                        params.labels.targets)
    out = {}
    for variant, mp in params.models.items():
        if MODELS[mp.family].fitted:  # no feed: fitted on thumbnails in one pass
            continue
        model = build_model(mp.family, size, len(data.targets), dropout=mp.dropout)
        model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
        feed = iter(make_dataset(data.pixels, data.splits["train"], batch, shuffle=True, seed=0,
                                 augment=augmentation(params.train.augment, 0)).repeat())
        x0, y0 = next(feed)
        for _ in range(3):  # trace and warm up
            model.train_on_batch(x0, y0)
        steps = 12

        def real():
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                x, y = next(feed)
                model.train_on_batch(x, y)
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        def memory():
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                model.train_on_batch(x0, y0)
                times.append(time.perf_counter() - t)
            return statistics.median(times)
        real_t, memory_t = real(), memory()
        out[variant] = {"step_ms_pipeline": real_t * 1000, "step_ms_in_memory": memory_t * 1000,
                        "ratio": real_t / memory_t}
    return out


# --- 4, 5, 7: the pipeline itself ---

PEAK_RSS = """
import resource, subprocess, sys, json, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _measured(cmd: list[str], project: Path) -> dict:
    """Run ``cmd``; its wall time and the peak RSS of the largest process in its tree."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], cwd=project, env=project_env(project),
                          capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-1500:]}")
    result["stdout"] = proc.stdout
    return result


def _stage_names(project: Path) -> list[str]:
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=project, env=project_env(project),
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def bench_pipeline(work: Path) -> dict:
    project = make_project(work / "project")
    stages, total = {}, 0.0
    for name in _stage_names(project):  # dvc lists stages in pipeline order
        m = _measured(["dvc", "repro", "--single-item", name], project)
        stages[name] = {"seconds": round(m["seconds"], 1), "peak_rss_mb": round(m["peak_rss_mb"])}
        total += m["seconds"]
    noop = [_measured(["dvc", "repro"], project)["seconds"] for _ in range(3)]
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("threshold: fbeta", "threshold: youden"))
    changed = _measured(["dvc", "repro"], project)
    rerun = [line.split("'")[1] for line in changed["stdout"].splitlines() if line.startswith("Running stage")]
    return {"e2e_seconds": total, "stages": stages, "noop_repro_seconds": statistics.median(noop),
            "after_evaluate_param_change": {"seconds": changed["seconds"], "stages_rerun": rerun}}


# --- 6. export ---

def bench_export() -> dict:
    from cxr.data.dataset import load_dataset
    from cxr.export import TFLiteModel

    params = load_params(ROOT / "params.yaml")
    data = load_dataset(ROOT / "data/cache", ROOT / "data/labels.csv", ROOT / "data/splits.csv",
                        params.labels.targets)
    images = data.images("test")[:20]
    out = {}
    for variant in params.models:
        for path in sorted((ROOT / "models" / variant / "export").glob("*.tflite")):
            runner = TFLiteModel(path)
            fmt = path.stem.removeprefix("model_")
            out.setdefault(variant, {})[fmt] = {"ms_per_image": runner.latency_ms(images),
                                                "size_mb": path.stat().st_size / 1e6}
        if "fp32" in out.get(variant, {}):
            for m in out[variant].values():
                m["size_vs_fp32"] = m["size_mb"] / out[variant]["fp32"]["size_mb"]
    return out


def _mark(ok: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[ok]


def table(r: dict) -> str:
    rows = []
    if "resize" in r:
        x = r["resize"]
        rows += [f"1 resize cache      {x['cache_images_per_s']:8.1f} img/s  vs single-process Pillow "
                 f"{x['single_process_pillow_images_per_s']:.1f} -> {x['vs_single']:.2f}x "
                 f"(target >= {TARGETS['resize_vs_single']}x: {_mark(x['vs_single'] >= TARGETS['resize_vs_single'])})",
                 f"                                          vs decode-only all cores "
                 f"{x['decode_only_all_cores_images_per_s']:.1f} -> {x['vs_decode_limit']:.2f}x "
                 f"(target >= {TARGETS['resize_vs_decode_limit']}x: "
                 f"{_mark(x['vs_decode_limit'] >= TARGETS['resize_vs_decode_limit'])})"]
    if "feed" in r:
        x = r["feed"]
        rows.append(f"2 training feed     {x['ours_images_per_s']:8.1f} img/s  vs image_dataset_from_directory "
                    f"{x['image_dataset_from_directory_images_per_s']:.1f} -> {x['ratio']:.2f}x "
                    f"(target >= {TARGETS['feed_vs_keras']}x: {_mark(x['ratio'] >= TARGETS['feed_vs_keras'])})")
    for v, x in r.get("stall", {}).items():
        rows.append(f"3 input stall {v:<12} step {x['step_ms_pipeline']:.0f} ms from pipeline / "
                    f"{x['step_ms_in_memory']:.0f} ms in memory = {x['ratio']:.3f} "
                    f"(target <= {TARGETS['input_stall']}: {_mark(x['ratio'] <= TARGETS['input_stall'])})")
    if "pipeline" in r:
        x = r["pipeline"]
        change = x["after_evaluate_param_change"]
        rows += [f"4 no-op dvc repro   {x['noop_repro_seconds']:.2f} s (target <= {TARGETS['noop_repro_s']} s: "
                 f"{_mark(x['noop_repro_seconds'] <= TARGETS['noop_repro_s'])})",
                 f"  evaluate param    {change['seconds']:.1f} s, reran: {', '.join(change['stages_rerun'])}",
                 f"5 end to end        {x['e2e_seconds'] / 60:.1f} min from an empty cache (target <= 15 min: "
                 f"{_mark(x['e2e_seconds'] <= TARGETS['e2e_s'])})"]
        rows += [f"  {name:<18} {s['seconds']:7.1f} s  peak RSS {s['peak_rss_mb']:6d} MB"
                 for name, s in x["stages"].items()]
    for v, formats in r.get("export", {}).items():
        rows.append(f"6 export {v:<10} " + "; ".join(
            f"{fmt} {m['ms_per_image']:.2f} ms/img {m['size_mb']:.2f} MB ({m['size_vs_fp32']:.2f}x)"
            for fmt, m in formats.items()))
    if "pipeline" in r:
        rows.append("7 memory            peak RSS per stage: see the stage rows under 5")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the end-to-end pipeline run")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench.json"))
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    workers = len(os.sched_getaffinity(0))
    results = {"machine": {"cpus": workers, "platform": platform.platform(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()},
               "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("1/6 resize ...", flush=True)
        results["resize"] = bench_resize(work, workers, params.image.size)
        print("2/6 training feed ...", flush=True)
        results["feed"] = bench_feed(work, params.image.size, params.train.batch_size)
        print("3/6 input stall ...", flush=True)
        results["stall"] = bench_stall(params.image.size, params.train.batch_size)
        print("6/6 export latency ...", flush=True)
        results["export"] = bench_export()
        if not args.quick:
            print("4,5,7 the default pipeline from an empty cache (~15 min) ...", flush=True)
            results["pipeline"] = bench_pipeline(work)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print()
    print(table(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
