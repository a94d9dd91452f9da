"""Where the pipeline's files live, relative to the project root, named once.

dvc.yaml names the same paths for DVC; stages, ``cxr predict`` and the report
take them from here.
"""
from __future__ import annotations

RAW = "data/raw"                                   # download's output: images/ + metadata CSV
RAW_IMAGES = f"{RAW}/images"
MANIFEST_FILE = "images.md5"                       # every raw image's md5 and name (md5sum's format)
METADATA_FILE = "Data_Entry_2017.csv"            # NIH's name, also inside Kaggle's archives
RAW_METADATA = f"{RAW}/{METADATA_FILE}"
BUNDLED = "data/sample"                            # the real NIH sample shipped with the project
BOXES = f"{BUNDLED}/meta/BBox_List_2017.csv.gz"    # radiologists' boxes (Grad-CAM localization)
OFFICIAL_TEST = f"{BUNDLED}/meta/test_list.txt.gz"
OFFICIAL_METADATA = f"{BUNDLED}/meta/Data_Entry_2017_v2020.csv.gz"   # all 112,120 rows (metadata baseline)
EXPERT_LABELS = f"{BUNDLED}/meta/google2019_nih-chest-xray-labels.csv.gz"   # radiologists' labels, 4,376 images
LABELS = "data/labels.csv"
SPLITS = "data/splits.csv"
CACHE = "data/cache"                               # resized uint8 images (memory-mapped)
CACHE_IMAGES_FILE, CACHE_INDEX_FILE = "images.npy", "index.csv"
FEATURES = "data/features"                         # a frozen backbone's output per cache row: data/features/<variant>/

DATA_STAGE_METRICS = ("labels", "split", "resize")   # metrics/<stage>.json of the data stages

MODELS = "models"
MODEL_FILE = "model.keras"
MODEL_INFO = "model.json"                          # variant, family, targets, size: written by train
DVC_LOCK = "dvc.lock"
METRICS = "metrics"
REPORTS = "reports"
DATA_REPORTS = f"{REPORTS}/data"                   # pictures of the data (split stage)
RECIPES = "recipes"                                # earlier projects' setups as params overrides (cxr recipe)
SEED_STUDY = f"{REPORTS}/seeds.json"               # every variant over several split seeds: bench/seeds.py


def features_dir(variant: str) -> str:
    return f"{FEATURES}/{variant}"


def model_dir(variant: str) -> str:
    return f"{MODELS}/{variant}"


def model_file(variant: str) -> str:
    return f"{MODELS}/{variant}/{MODEL_FILE}"


def export_dir(variant: str) -> str:
    return f"{MODELS}/{variant}/export"


def stage_metrics(stage: str, variant: str | None = None, suffix: str = ".json") -> str:
    """``metrics/<stage>.json``, or ``metrics/<stage>/<variant>.json`` for per-variant stages."""
    return f"{METRICS}/{stage}{suffix}" if variant is None else f"{METRICS}/{stage}/{variant}{suffix}"


def variant_reports(variant: str) -> str:
    return f"{REPORTS}/{variant}"


def timings(stage: str, variant: str) -> str:
    """Machine facts (seconds, images/s): logs, not DVC outputs."""
    return f"{REPORTS}/timings/{stage}/{variant}.json"
