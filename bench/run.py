"""Benchmarks: the pipeline's speed beside the usual alternatives, measured in the same run.

Prints a table and writes reports/bench.json. Figures, not assertions: this
machine is shared, so each timing is a median of several runs and every
comparison is a ratio measured here, now, on the same images.

    python bench/run.py            # everything (~20 min on 2 cores; the end-to-end run dominates)
    python bench/run.py --quick    # skip the end-to-end pipeline run (figures 4, 5, 7-train)
"""
from __future__ import annotations

import argparse
import io
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
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pyspng  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import make_project, project_env  # noqa: E402

from cxr.data.cache import build_cache  # noqa: E402
from cxr.data.images import read_image, resize_image  # noqa: E402
from cxr.params import load_params  # noqa: E402

TARGETS = {"resize_vs_single": 2.5, "resize_vs_decode_limit": 0.9, "feed_vs_keras": 5.0,
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


def _decode_pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _decode_opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


DECODERS = {"pillow": _decode_pillow, "libspng": pyspng.load, "opencv": _decode_opencv}


def _decode_file(job: tuple[str, str]) -> int:
    """Decode-only work for a pool: ``(decoder, path)``."""
    decoder, path = job
    return DECODERS[decoder](Path(path).read_bytes()).size


def _previous_downscale(pixels: np.ndarray, size: int) -> np.ndarray:
    """The downscale before issue 17: Lanczos with reducing_gap 3 (a full Lanczos below 3x)."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0))


def _previous_resize(job: tuple[str, int]) -> int:
    """The resize before issue 17, for a pool: Pillow's decode, then the previous downscale."""
    path, size = job
    return _previous_downscale(np.asarray(Image.open(path)), size).size


def _ms_per_image(fn, items: list, repeats: int = 3) -> float:
    return median_time(lambda: [fn(x) for x in items], repeats) / len(items) * 1000


# --- 1. resize cache throughput ---

CHUNKS = (8, 32, 128)


def bench_resize(work: Path, workers: int, size: int) -> dict:
    """The cache build beside decode-only with the fastest decoder, all on one started pool."""
    from cxr.data.cache import CHUNK_IMAGES
    paths = tiled_images(work / "full_size", 400, 1024)
    n = len(paths)
    sample = [p.read_bytes() for p in paths[:60]]
    decoded = [pyspng.load(d) for d in sample]
    per_image = {f"decode_{name}_ms": _ms_per_image(fn, sample) for name, fn in DECODERS.items()}
    per_image["downscale_ms"] = _ms_per_image(lambda a: resize_image(a, size), decoded)
    per_image["downscale_before_ms"] = _ms_per_image(lambda a: _previous_downscale(a, size), decoded)
    per_image["read_and_resize_ms"] = _ms_per_image(lambda d: resize_image(read_image(d), size), sample)
    fastest = min(DECODERS, key=lambda name: per_image[f"decode_{name}_ms"])

    def single():
        for p in paths:
            np.asarray(Image.open(p).convert("L").resize((size, size), Image.Resampling.LANCZOS))
    single_t = median_time(single, 3)
    with get_context("forkserver").Pool(workers) as pool:
        pool.map(_decode_file, [(fastest, str(paths[0]))] * workers)  # started and warm before any timing
        decode_t = median_time(lambda: list(pool.imap(_decode_file, [(fastest, str(p)) for p in paths],
                                                      chunksize=CHUNK_IMAGES)), 3)
        before_t = median_time(lambda: list(pool.imap(_previous_resize, [(str(p), size) for p in paths],
                                                      chunksize=CHUNK_IMAGES)), 3)
        by_chunk = {c: median_time(lambda: build_cache(paths, size, workers, work / "cache", progress=False,
                                                       pool=pool, chunk_images=c), 3) for c in CHUNKS}
    parallel = by_chunk[CHUNK_IMAGES]
    return {"images": n, "size": size, "source": f"557 real images tiled to {n} and upscaled to 1024x1024 PNG",
            "workers": workers, "per_image_one_process": per_image, "fastest_decoder": fastest,
            "cache_images_per_s": n / parallel, "single_process_pillow_images_per_s": n / single_t,
            "decode_only_all_cores_images_per_s": n / decode_t, "before_images_per_s": n / before_t,
            "cache_images_per_s_by_chunk": {str(c): n / t for c, t in by_chunk.items()}, "chunk": CHUNK_IMAGES,
            "vs_single": single_t / parallel, "vs_decode_limit": decode_t / parallel,
            "before_vs_single": single_t / before_t, "before_vs_decode_limit": decode_t / before_t}


# --- 2. training feed ---

def keras_augmentation(params, seed: int):
    """The Keras layers the feed's augmentation replaced (and image_dataset_from_directory users apply)."""
    import keras
    layers = [keras.layers.RandomRotation(params.rotation / 360, fill_mode="constant", seed=seed),
              keras.layers.RandomTranslation(params.shift, params.shift, fill_mode="constant", seed=seed + 1),
              keras.layers.RandomZoom(params.zoom, fill_mode="constant", seed=seed + 2),
              keras.layers.RandomShear(params.shear, params.shear, fill_mode="constant", seed=seed + 3)]
    if params.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 4))
    return keras.Sequential(layers, name="augment")


def bench_feed(work: Path, size: int, batch: int) -> dict:
    import keras
    import tensorflow as tf

    from cxr.data.dataset import Subset
    from cxr.train import make_dataset

    augment = load_params(ROOT / "params.yaml").train.augment
    folder = work / "feed" / "all"
    paths = tiled_images(folder, 2000, None)
    build_cache(paths, size, len(os.sched_getaffinity(0)), work / "feed_cache", progress=False)
    pixels = np.load(work / "feed_cache" / "images.npy", mmap_mode="r")
    subset = Subset(names=np.array([p.name for p in paths]), rows=np.arange(len(paths)),
                    y=np.zeros((len(paths), 14), np.float32), patients=np.arange(len(paths)))

    def ours(aug):
        return make_dataset(pixels, subset, batch, shuffle=True, seed=0, augment=aug)
    layers = keras_augmentation(augment, 0)
    before = ours(None).map(lambda x, t: (tf.clip_by_value(layers(x, training=True), 0.0, 255.0), t))
    theirs = keras.utils.image_dataset_from_directory(
        work / "feed", labels=None, color_mode="grayscale", image_size=(size, size), batch_size=batch,
        shuffle=True, seed=0, interpolation="area")
    theirs = theirs.map(lambda x: layers(x, training=True)).prefetch(tf.data.AUTOTUNE)

    def rate(ds):
        return len(paths) / median_time(lambda: sum(1 for _ in ds), 3)
    out = {"images": len(paths), "source": "557 real PNGs tiled to 2000 (256x256)", "batch": batch,
           "ours_images_per_s": rate(ours(augment)), "ours_no_augmentation_images_per_s": rate(ours(None)),
           "before_images_per_s": rate(before), "image_dataset_from_directory_images_per_s": rate(theirs)}
    out["ratio"] = out["ours_images_per_s"] / out["image_dataset_from_directory_images_per_s"]
    out["before_ratio"] = out["before_images_per_s"] / out["image_dataset_from_directory_images_per_s"]
    return out


# --- 3. input stall ---

def bench_stall(size: int, batch: int) -> dict:
    import keras

    from cxr.data.dataset import load_dataset
    from cxr.models import MODELS
    from cxr.train import build_network, make_dataset

    params = load_params(ROOT / "params.yaml")
    data = load_dataset(ROOT / "data/cache", ROOT / "data/labels.csv", ROOT / "data/splits.csv",
                        params.labels.targets)
    out = {}
    for variant, mp in params.models.items():
        if MODELS[mp.family].fitted:  # no feed: fitted on thumbnails in one pass
            continue
        model = build_network(mp, size, len(data.targets), variant)
        model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
        feed = iter(make_dataset(data.pixels, data.splits["train"], batch, shuffle=True, seed=0,
                                 augment=params.train.augment).repeat())
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
        one = x["per_image_one_process"]
        rows += [f"1 resize cache      {x['cache_images_per_s']:8.1f} img/s (before {x['before_images_per_s']:.1f})  "
                 f"vs single-process Pillow {x['single_process_pillow_images_per_s']:.1f} -> {x['vs_single']:.2f}x "
                 f"(before {x['before_vs_single']:.2f}x; target >= {TARGETS['resize_vs_single']}x: "
                 f"{_mark(x['vs_single'] >= TARGETS['resize_vs_single'])})",
                 f"                    vs decode-only all cores ({x['fastest_decoder']}) "
                 f"{x['decode_only_all_cores_images_per_s']:.1f} -> {x['vs_decode_limit']:.2f}x "
                 f"(before {x['before_vs_decode_limit']:.2f}x; target >= {TARGETS['resize_vs_decode_limit']}x: "
                 f"{_mark(x['vs_decode_limit'] >= TARGETS['resize_vs_decode_limit'])})",
                 "  per image, one process: " + ", ".join(
                     f"decode {k[7:-3]} {v:.2f} ms" for k, v in one.items() if k.startswith("decode_"))
                 + f"; downscale to {x['size']} px {one['downscale_ms']:.2f} ms (before {one['downscale_before_ms']:.2f})"
                 f"; read + resize {one['read_and_resize_ms']:.2f} ms",
                 "  img/s by images per task: " + ", ".join(
                     f"{c}: {v:.1f}" for c, v in x["cache_images_per_s_by_chunk"].items()) + f" (uses {x['chunk']})"]
    if "feed" in r:
        x = r["feed"]
        rows.append(f"2 training feed     {x['ours_images_per_s']:8.1f} img/s (before {x['before_images_per_s']:.1f}; "
                    f"augmentation off {x['ours_no_augmentation_images_per_s']:.1f})  vs image_dataset_from_directory "
                    f"{x['image_dataset_from_directory_images_per_s']:.1f} -> {x['ratio']:.2f}x (before "
                    f"{x['before_ratio']:.2f}x; target >= {TARGETS['feed_vs_keras']}x: "
                    f"{_mark(x['ratio'] >= TARGETS['feed_vs_keras'])})")
    for v, x in r.get("stall", {}).items():
        rows.append(f"3 input stall {v:<12} step {x['step_ms_pipeline']:.0f} ms from pipeline / "
                    f"{x['step_ms_in_memory']:.0f} ms in memory = {x['ratio']:.3f} "
                    f"(target <= {TARGETS['input_stall']}: {_mark(x['ratio'] <= TARGETS['input_stall'])})")
    if "pipeline" in r:
        x = r["pipeline"]
        if "date" in x:
            rows.append(f"  (4, 5, 7 from the end-to-end run of {x['date']})")
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
        elif Path(args.out).exists():  # keep the last end-to-end figures, with their date
            previous = json.loads(Path(args.out).read_text())
            if "pipeline" in previous:
                results["pipeline"] = {**previous["pipeline"], "date": previous["pipeline"].get("date", previous["date"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print()
    print(table(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
