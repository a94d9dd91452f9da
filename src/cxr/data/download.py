"""Data sources: the bundled real sample (offline) and Kaggle's NIH datasets.

Every source produces the same thing: ``<raw>/images/`` (flat, one PNG per
image), ``<raw>/images.md5`` (the manifest: every image's md5 and name) and
``<raw>/Data_Entry_2017.csv`` (normalized metadata). Fetching is
resumable: an image already present with the expected size is not fetched
again, and each file lands by rename, so a partial file is never taken for a
complete one. Images from a previous source that the current one lacks are
removed, so ``images/`` is always exactly the chosen source.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pandas as pd

from cxr.data.metadata import normalize_metadata, read_metadata
from cxr.errors import CxrError, first_line
from cxr.outputs import atomic_path, write_csv
from cxr.paths import MANIFEST_FILE, METADATA_FILE

KAGGLE_DATASETS = {"kaggle-sample": "nih-chest-xrays/sample", "kaggle-full": "nih-chest-xrays/data"}
# What the metadata is called inside each Kaggle archive.
_ARCHIVE_METADATA = ("Data_Entry_2017.csv", "sample_labels.csv", "Data_Entry_2017_v2020.csv")
BUNDLED_METADATA = "meta/Data_Entry_2017_v2020.csv.gz"


class DownloadError(CxrError):
    """A source that cannot be fetched; the message says what to set or fix."""


def _place(dest: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(dest) as tmp:
        write(tmp)


def _remove_stale(images_dir: Path, keep: set[str]) -> int:
    stale = [p for p in images_dir.iterdir() if p.name not in keep]
    for p in stale:
        p.unlink()
    return len(stale)


def fetch_bundled(bundled_dir: str | os.PathLike, raw_dir: str | os.PathLike) -> dict:
    """Copy the bundled real NIH sample into ``raw_dir`` (offline)."""
    bundled_dir, raw_dir = Path(bundled_dir), Path(raw_dir)
    sources = sorted((bundled_dir / "images").glob("*.png"))
    if not sources:
        raise DownloadError(f"{bundled_dir / 'images'}: no bundled PNG images found")
    images_dir = raw_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    fetched = 0
    for src in sources:
        dest = images_dir / src.name
        if dest.is_file() and dest.stat().st_size == src.stat().st_size:
            continue
        _place(dest, lambda tmp, src=src: shutil.copyfile(src, tmp))
        fetched += 1
    names = {p.name for p in sources}
    removed = _remove_stale(images_dir, names)
    meta = read_metadata(bundled_dir / BUNDLED_METADATA)
    meta = meta[meta["Image Index"].isin(names)]
    write_csv(raw_dir / METADATA_FILE, meta)
    return {"source": "sample", "images": len(names), "fetched": fetched,
            "already_present": len(names) - fetched, "removed_stale": removed, "metadata_rows": len(meta)}


def kaggle_credentials_found(env: dict | None = None, home: str | os.PathLike | None = None) -> bool:
    """Whether the kaggle package will find credentials (env vars or kaggle.json)."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR") or Path(home or Path.home()) / ".kaggle")
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def default_kaggle_api():
    """The real client. Imported here: ``import kaggle`` authenticates at import time."""
    from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi()


def _archive_images(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    images = {}
    for info in zf.infolist():
        name = Path(info.filename).name
        if not info.is_dir() and name.lower().endswith(".png"):
            images.setdefault(name, info)  # Kaggle's sample archive holds some images twice
    return images


def _archive_metadata(zf: zipfile.ZipFile, archive: Path) -> pd.DataFrame:
    by_name = {Path(i.filename).name: i for i in zf.infolist()}
    for name in _ARCHIVE_METADATA:
        if name in by_name:
            with zf.open(by_name[name]) as f:
                return normalize_metadata(pd.read_csv(f), f"{archive}:{name}")
    raise DownloadError(f"{archive}: no metadata file ({', '.join(_ARCHIVE_METADATA)}) in the archive")


def _discard_archive(archive: Path) -> None:
    """Delete an archive that cannot be used, and the Kaggle client's resume marker beside it,
    so the next run downloads it again instead of failing the same way."""
    for path in (archive, archive.with_name(archive.name + ".kaggle-partial")):
        path.unlink(missing_ok=True)


def extract_images(archive: Path, raw_dir: Path) -> dict:
    """Unpack the archive's PNGs flat into ``raw_dir/images`` and its metadata to CSV.

    Every member is CRC-checked as it is read; each image lands by rename, so a
    corrupt archive leaves only verified images behind (kept: the next run
    skips them) and is itself deleted.
    """
    images_dir = raw_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            meta = _archive_metadata(zf, archive)
            images = _archive_images(zf)
            fetched = 0
            from tqdm import tqdm
            for name, info in tqdm(sorted(images.items()), desc="extract", unit="img"):
                dest = images_dir / name
                if dest.is_file() and dest.stat().st_size == info.file_size:
                    continue
                with zf.open(info) as src:
                    _place(dest, lambda tmp, src=src: tmp.write_bytes(src.read()))
                fetched += 1
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        _discard_archive(archive)
        raise DownloadError(f"{archive}: corrupt or incomplete zip archive ({first_line(e)}); deleted, "
                            "run again to re-download") from None
    removed = _remove_stale(images_dir, set(images))
    write_csv(raw_dir / METADATA_FILE, meta)
    return {"images": len(images), "fetched": fetched, "already_present": len(images) - fetched,
            "removed_stale": removed, "metadata_rows": len(meta)}


def fetch_kaggle(dataset: str, raw_dir: str | os.PathLike, api=None, credentials: bool | None = None) -> dict:
    """Download a Kaggle dataset archive (resumable) and unpack it into ``raw_dir``.

    ``api`` is a ``KaggleApi``-like object (``authenticate()``,
    ``dataset_download_files(dataset, path=, quiet=, unzip=)``); the default
    is the real client. The archive is kept in ``raw_dir/.download/`` until it
    is fully unpacked, so an interrupted download resumes where it stopped.
    """
    raw_dir = Path(raw_dir)
    if not (kaggle_credentials_found() if credentials is None else credentials):
        raise DownloadError(
            "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in "
            "~/.kaggle/ (or use data.source: sample for the bundled offline sample)")
    api = api or default_kaggle_api()
    work = raw_dir / ".download"
    work.mkdir(parents=True, exist_ok=True)
    try:
        api.authenticate()
        api.dataset_download_files(dataset, path=str(work), quiet=False, unzip=False)
    except SystemExit:  # the kaggle client exits when it rejects the credentials
        raise DownloadError("Kaggle rejected the credentials: check KAGGLE_USERNAME / KAGGLE_KEY") from None
    except Exception as e:  # network, HTTP and auth errors all arrive as different types
        reason = first_line(e)
        raise DownloadError(f"Kaggle download of {dataset} failed: {reason} (network reachable? "
                            "or use data.source: sample)") from None
    archive = work / (dataset.split("/")[-1] + ".zip")
    if not archive.is_file():
        raise DownloadError(f"{archive}: the Kaggle client reported success but wrote no archive")
    report = extract_images(archive, raw_dir)
    shutil.rmtree(work)
    return {"source": dataset, **report}


def fetch(source: str, raw_dir: str | os.PathLike, bundled_dir: str | os.PathLike, api=None) -> dict:
    """Fetch ``source`` (``sample``, ``kaggle-sample`` or ``kaggle-full``) into ``raw_dir``, then
    write its manifest."""
    if source == "sample":
        report = fetch_bundled(bundled_dir, raw_dir)
    elif source in KAGGLE_DATASETS:
        report = fetch_kaggle(KAGGLE_DATASETS[source], raw_dir, api=api)
    else:
        raise DownloadError(f"unknown data.source {source!r}; expected sample, {', '.join(KAGGLE_DATASETS)}")
    write_manifest(raw_dir)
    return report


def _image_names(images_dir: str | os.PathLike) -> list[str]:
    """Names of the image files in a raw images folder, sorted."""
    return sorted(p.name for p in Path(images_dir).iterdir() if p.is_file() and not p.name.startswith("."))


def _md5_lines(images_dir: Path, names: list[str]) -> str:
    lines = []
    for name in names:
        with open(images_dir / name, "rb") as f:
            lines.append(f"{hashlib.file_digest(f, 'md5').hexdigest()}  {name}\n")
    return "".join(lines)


def write_manifest(raw_dir: str | os.PathLike) -> Path:
    """Write ``raw_dir/images.md5``: the md5 and name of every image in ``raw_dir/images``, in
    ``md5sum``'s format (``cd data/raw/images && md5sum -c ../images.md5`` checks it).

    The stages that read the images depend on this file instead of on the folder: DVC then
    walks the 112,120 files of the full dataset once per command (download's output) instead
    of once more per stage, and a changed image still changes the file. Hashing reads every
    image once (threads: hashlib releases the GIL), in tasks of many images: one task per image
    held ~230 MB of futures at 112,120 images.
    """
    raw_dir = Path(raw_dir)
    names = _image_names(raw_dir / "images")
    tasks = [names[start:start + 1000] for start in range(0, len(names), 1000)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        text = "".join(pool.map(partial(_md5_lines, raw_dir / "images"), tasks))
    dest = raw_dir / MANIFEST_FILE
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return dest


_MANIFEST_LINE = re.compile(r"[0-9a-f]{32}  ([^/\n]+)")


def manifest_names(raw_dir: str | os.PathLike) -> list[str]:
    """The image names in ``raw_dir``'s manifest, checked: every line ``<md5>  <name>``, every
    image present in ``raw_dir/images``."""
    raw_dir = Path(raw_dir)
    manifest = raw_dir / MANIFEST_FILE
    if not manifest.is_file():
        raise DownloadError(f"{manifest}: not found; the download stage writes it (dvc repro download)")
    names = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        match = _MANIFEST_LINE.fullmatch(line)
        if not match:
            raise DownloadError(f"{manifest}:{number}: expected '<32 hex digits md5>  <image file name>', "
                                f"got {line[:80]!r}")
        names.append(match.group(1))
    if not names:
        raise DownloadError(f"{manifest}: lists no images")
    missing = [n for n in names if not (raw_dir / "images" / n).is_file()]
    if missing:
        raise DownloadError(f"{raw_dir / 'images' / missing[0]}: listed in {manifest} but missing "
                            f"({len(missing)} of {len(names)} missing); run the download stage again")
    return names
