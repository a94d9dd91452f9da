"""Sources: bundled sample, and the Kaggle path against a local stand-in of the API."""
import gzip
import hashlib
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pandas as pd
import pytest

from conftest import BUNDLED, FULL_METADATA, edit_params, project_env, run
from cxr.data import read_metadata
from cxr.data.download import (DownloadError, fetch, fetch_bundled, fetch_kaggle, kaggle_credentials_found,
                               manifest_names)


class LocalKaggleApi:
    """Stands in for kaggle's KaggleApi: the same two calls, served from a local archive.

    Like the real client it writes ``<path>/<dataset-slug>.zip`` and can be
    told to fail (network down) or to stop half-way (interrupted download).
    """

    def __init__(self, archive: Path, fail: Exception | None = None, truncate: bool = False):
        self.archive, self.fail, self.truncate = archive, fail, truncate
        self.calls = []

    def authenticate(self):
        self.calls.append("authenticate")

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=[]):
        self.calls.append(("download", dataset))
        if self.fail:
            raise self.fail
        out = Path(path) / (dataset.split("/")[-1] + ".zip")
        data = self.archive.read_bytes()
        out.write_bytes(data[: len(data) // 2] if self.truncate else data)


@pytest.fixture
def kaggle_sample_archive(tmp_path, sample_images) -> Path:
    """Kaggle's nih-chest-xrays/sample layout, built from 30 real images and their real rows."""
    names = [p.name for p in sample_images[:30]]
    with gzip.open(FULL_METADATA, "rt") as f:
        rows = pd.read_csv(f)
    rows = rows[rows["Image Index"].isin(names)]
    rows.columns = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                    "View Position", "OriginalImageWidth", "OriginalImageHeight",
                    "OriginalImagePixelSpacing_x", "OriginalImagePixelSpacing_y"]
    rows["Patient Age"] = rows["Patient Age"].map(lambda a: f"{a:03d}Y")
    archive = tmp_path / "kaggle" / "sample.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sample_images[:30]:
            zf.write(p, f"sample/images/{p.name}")
        zf.write(sample_images[0], f"sample/sample/images/{sample_images[0].name}")  # Kaggle's duplicate folder
        zf.writestr("sample/sample_labels.csv", rows.to_csv(index=False))
    return archive


def test_bundled_fetch_is_resumable_and_exact(tmp_path):
    raw = tmp_path / "raw"
    first = fetch_bundled(BUNDLED, raw)
    assert first["images"] == first["fetched"] == 557 and first["metadata_rows"] == 557
    (raw / "images" / "stale.png").write_bytes(b"from another source")
    victim = sorted((raw / "images").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:100])  # a partial file must not count as present
    second = fetch_bundled(BUNDLED, raw)
    assert second["fetched"] == 1 and second["removed_stale"] == 1
    assert victim.read_bytes() == (BUNDLED / "images" / victim.name).read_bytes()
    assert len(read_metadata(raw / "Data_Entry_2017.csv")) == 557


def test_fetch_writes_the_manifest_md5sum_checks(tmp_path):
    raw = tmp_path / "raw"
    fetch("sample", raw, BUNDLED)
    images = sorted((raw / "images").iterdir())
    lines = (raw / "images.md5").read_text().splitlines()
    assert lines == [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}" for p in images] and len(lines) == 557
    # coreutils reads it as its own format
    check = subprocess.run(["md5sum", "--check", "--quiet", "../images.md5"], cwd=raw / "images")
    assert check.returncode == 0
    assert manifest_names(raw) == [p.name for p in images]
    images[0].unlink()   # the folder changed: the next fetch restores it and writes the manifest again
    (raw / "images" / "stale.png").write_bytes(b"from another source")
    fetch("sample", raw, BUNDLED)
    assert (raw / "images.md5").read_text().splitlines() == lines


def test_a_bad_manifest_is_one_line_naming_it(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    with pytest.raises(DownloadError, match=r"raw/images.md5: not found; the download stage writes it"):
        manifest_names(raw)
    (raw / "images.md5").write_text("")
    with pytest.raises(DownloadError, match=r"raw/images.md5: lists no images"):
        manifest_names(raw)
    (raw / "images.md5").write_text(f"{'0' * 32}  a.png\nnot a line\n")
    with pytest.raises(DownloadError, match=r"raw/images.md5:2: expected '<32 hex digits md5>  <image file name>', "
                                            r"got 'not a line'"):
        manifest_names(raw)
    (raw / "images.md5").write_text(f"{'0' * 32}  a.png\n{'1' * 32}  b.png\n")
    (raw / "images" / "b.png").write_bytes(b"")
    with pytest.raises(DownloadError, match=r"raw/images/a.png: listed in .*raw/images.md5 but missing \(1 of 2 "
                                            r"missing\); run the download stage again"):
        manifest_names(raw)


def test_kaggle_download_through_the_api(tmp_path, kaggle_sample_archive):
    api = LocalKaggleApi(kaggle_sample_archive)
    raw = tmp_path / "raw"
    report = fetch_kaggle("nih-chest-xrays/sample", raw, api=api, credentials=True)
    assert api.calls == ["authenticate", ("download", "nih-chest-xrays/sample")]
    assert report["images"] == report["fetched"] == 30
    assert len(list((raw / "images").iterdir())) == 30
    meta = read_metadata(raw / "Data_Entry_2017.csv")
    assert len(meta) == 30 and meta["Patient Age"].notna().all()
    assert not (raw / ".download").exists()  # the archive is removed once unpacked
    again = fetch_kaggle("nih-chest-xrays/sample", raw, api=api, credentials=True)
    assert again["fetched"] == 0 and again["already_present"] == 30


def test_interrupted_archive_is_a_clear_error_and_not_kept(tmp_path, kaggle_sample_archive):
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match="corrupt or incomplete zip archive"):
        fetch_kaggle("nih-chest-xrays/sample", raw, api=LocalKaggleApi(kaggle_sample_archive, truncate=True),
                     credentials=True)
    assert not (raw / ".download" / "sample.zip").exists()
    assert fetch_kaggle("nih-chest-xrays/sample", raw, api=LocalKaggleApi(kaggle_sample_archive),
                        credentials=True)["images"] == 30


def test_network_failure_is_one_line(tmp_path, kaggle_sample_archive):
    api = LocalKaggleApi(kaggle_sample_archive, fail=ConnectionError("Failed to resolve 'www.kaggle.com'\nmore"))
    with pytest.raises(DownloadError) as e:
        fetch_kaggle("nih-chest-xrays/data", tmp_path / "raw", api=api, credentials=True)
    assert str(e.value).startswith("Kaggle download of nih-chest-xrays/data failed: Failed to resolve")
    assert "\n" not in str(e.value)


def test_missing_credentials_say_what_to_set(tmp_path):
    assert not kaggle_credentials_found(env={}, home=tmp_path)
    assert kaggle_credentials_found(env={"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=tmp_path)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert kaggle_credentials_found(env={}, home=tmp_path)
    with pytest.raises(DownloadError, match="set KAGGLE_USERNAME and KAGGLE_KEY"):
        fetch_kaggle("nih-chest-xrays/sample", tmp_path / "raw", api=object(), credentials=False)
    assert not (tmp_path / "raw").exists()


def test_real_client_is_what_the_default_uses():
    from kaggle.api.kaggle_api_extended import KaggleApi
    from cxr.data.download import default_kaggle_api
    api = default_kaggle_api()
    assert isinstance(api, KaggleApi)
    assert callable(api.dataset_download_files) and callable(api.authenticate)


class KaggleStandIn:
    """kaggle.com for the real client, served on 127.0.0.1 as an HTTP proxy.

    With ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the real ``KaggleApi`` calls
    http://localhost/api/v1/...; ``HTTP_PROXY`` sends those requests here, so
    the client's own code downloads and writes the archive (and its resume
    marker), exactly as it does from kaggle.com.
    """

    def __init__(self):
        import http.server
        import threading
        stand_in = self
        self.archive, self.requests = b"", []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self):
                stand_in.requests.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(stand_in.archive)))
                self.send_header("Last-Modified", "Mon, 02 Nov 2026 10:00:00 GMT")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{zlib.crc32(stand_in.archive)}"')
                self.end_headers()
                self.wfile.write(stand_in.archive)

            do_GET = do_POST = _send

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self, config_dir: Path) -> dict:
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": f"http://127.0.0.1:{self.server.server_port}",
                "NO_PROXY": "", "no_proxy": "", "KAGGLE_USERNAME": "cxr-test", "KAGGLE_KEY": "0" * 32,
                "KAGGLE_CONFIG_DIR": str(config_dir)}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _flip_a_byte_inside(archive: bytes, member: str) -> bytes:
    """The archive with one byte of ``member``'s stored data changed: complete, but its CRC fails."""
    import io
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.getinfo(member)
    assert info.compress_type == zipfile.ZIP_STORED
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(archive)
    data[start + info.compress_size // 2] ^= 0xFF
    return bytes(data)


def test_complete_archive_with_a_bad_crc_is_deleted_so_the_rerun_downloads_again(project, kaggle_sample_archive):
    edit_params(project, lambda p: p["data"].update(source="kaggle-sample"))
    good = kaggle_sample_archive.read_bytes()
    member = sorted(n for n in zipfile.ZipFile(kaggle_sample_archive).namelist() if n.endswith(".png"))[10]
    stand_in = KaggleStandIn()
    env = {**project_env(project), **stand_in.env(project / "kaggle-config")}
    try:
        stand_in.archive = _flip_a_byte_inside(good, member)
        proc = run([sys.executable, "stages/download.py"], project, check=False, env=env)
        assert stand_in.requests == ["http://localhost/api/v1/datasets.DatasetApiService/DownloadDataset"]
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1] == (
            f"download: data/raw/.download/sample.zip: corrupt or incomplete zip archive "
            f"(Bad CRC-32 for file '{member}'); deleted, run again to re-download")
        assert not list((project / "data/raw/.download").iterdir())   # neither archive nor the client's marker
        assert member.split("/")[-1] not in {p.name for p in (project / "data/raw/images").iterdir()}
        stand_in.archive = good
        proc = run([sys.executable, "stages/download.py"], project, env=env)
        assert "download: 30 images from nih-chest-xrays/sample (20 fetched, 10 already present" in proc.stdout
        assert len(stand_in.requests) == 2
    finally:
        stand_in.close()
