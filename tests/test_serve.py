"""`cxr serve`: the JSON API, bad uploads, concurrency, and the page in a real browser."""
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from conftest import BUNDLED, ROOT
from test_images import _png_claiming

IMAGES = sorted((BUNDLED / "images").glob("*.png"))
BROWSER_DIR = ROOT / "tests" / "browser"


@pytest.fixture(scope="module")
def predictor(tiny_project):
    from cxr.predict import load_predictor
    return load_predictor(tiny_project / "models" / "cnn", root=tiny_project)


@pytest.fixture(scope="module")
def client(predictor):
    from cxr.serve import create_app
    return create_app(predictor, max_mb=1).test_client()


def _post(client, data: bytes, name="x.png", query=""):
    return client.post("/api/predict" + query, data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_health_names_the_model(client):
    body = client.get("/api/health").get_json()
    assert body["status"] == "ok" and body["model"] == "cnn (keras)" and len(body["targets"]) == 14


def test_predict_returns_what_cxr_predict_json_prints(client, predictor):
    from cxr.predict import predict_files
    [(_, expected, _)] = list(predict_files(predictor, [IMAGES[0]]))
    got = _post(client, IMAGES[0].read_bytes(), IMAGES[0].name).get_json()
    expected["image"] = IMAGES[0].name
    assert got == expected


def test_heatmap_and_preview_on_request(client):
    body = _post(client, IMAGES[1].read_bytes(), query="?heatmap=1").get_json()
    assert body["preview_png"].startswith("data:image/png;base64,")
    assert body["heatmap_png"].startswith("data:image/png;base64,")


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.open(IMAGES[0]).save(buf, "GIF")
    return buf.getvalue()


@pytest.mark.parametrize("data,status,message", [
    (b"", 400, "empty file"),
    (b"hello, not an image", 415, "unsupported type"),
    (_gif(), 415, "unsupported type; upload a PNG, JPEG or DICOM file"),
    (_png_claiming(30000, 30000), 422, "decompression bomb"),
    (IMAGES[0].read_bytes()[:500], 422, "corrupt PNG"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024), 413, "over the 1 MB limit"),
])
def test_bad_uploads_get_4xx_with_one_line_json(client, data, status, message):
    before = set(os.listdir(tempfile.gettempdir()))
    r = _post(client, data)
    assert r.status_code == status and r.is_json
    error = r.get_json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert set(os.listdir(tempfile.gettempdir())) <= before  # nothing written


def test_missing_file_field(client):
    r = client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no file" in r.get_json()["error"]


@pytest.fixture(scope="module")
def server(predictor):
    """The app on a real loopback socket, threaded, for concurrency and the browser."""
    from werkzeug.serving import make_server

    from cxr.serve import create_app
    srv = make_server("127.0.0.1", 0, create_app(predictor), threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def _http_predict(url: str, path: Path) -> dict:
    import urllib.request
    boundary = "cxrboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/api/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def test_twenty_concurrent_requests_get_their_own_answers(server):
    images = IMAGES[:5]
    expected = {p.name: _http_predict(server, p) for p in images}
    jobs = [images[i % 5] for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda p: _http_predict(server, p), jobs))
    for path, result in zip(jobs, results):
        assert result == expected[path.name]


def test_page_in_headless_chromium_shows_findings_and_heatmap(server, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists() and (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), \
        "browser test needs Debian's chromium and tests/browser's npm packages: run `make browser-deps`"
    shot = tmp_path / "page.png"
    proc = subprocess.run(["node", "upload.mjs", server + "/", str(IMAGES[3]), str(shot)], cwd=BROWSER_DIR,
                          capture_output=True, text=True, timeout=180, env={**os.environ, "CHROMIUM": chromium})
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(shown["findings"]) == 14
    assert shown["probabilities"] == sorted(shown["probabilities"], reverse=True)
    assert shown["heatmapWidth"] > 0 and "not a diagnosis" in shown["note"]
    assert "abnormal score" in shown["flag"]
    assert Image.open(shot).size[0] >= 1000
    # README's picture is refreshed on request only, so a test run never edits tracked files:
    # CXR_SCREENSHOT=reports/serve_screenshot.png make test
    if os.environ.get("CXR_SCREENSHOT"):
        shutil.copy(shot, os.environ["CXR_SCREENSHOT"])
