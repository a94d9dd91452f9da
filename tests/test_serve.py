"""`cxr serve`: the JSON API, bad uploads, limits, the real server on a socket, the page in a browser."""
import dataclasses
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hostile
from conftest import BUNDLED, ROOT, project_env
from test_images import _png_claiming

IMAGES = sorted((BUNDLED / "images").glob("*.png"))
BROWSER_DIR = ROOT / "tests" / "browser"


@pytest.fixture(scope="module")
def predictor(tiny_project):
    from cxr.predict import load_predictor
    return load_predictor(tiny_project / "models" / "cnn", root=tiny_project)


@pytest.fixture(scope="module")
def client(predictor):
    from cxr.serve import ServeLimits, create_app
    return create_app(predictor, ServeLimits(max_mb=1)).test_client()


def _post(client, data: bytes, name="x.png", query=""):
    return client.post("/api/predict" + query, data={"file": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_health_names_the_model(client):
    body = client.get("/api/health").get_json()
    assert body["status"] == "ok" and body["model"] == "cnn (keras)" and len(body["targets"]) == 14
    assert body["decision"] == "abnormal" and 0 <= body["threshold"] <= 1


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


def test_the_served_heatmap_is_the_bundles_rule_map(tiny_project):
    from test_heatmaps import served_heatmap_is_the_rules_map
    body = served_heatmap_is_the_rules_map(tiny_project, IMAGES[1])
    assert body["heatmap_caption"].startswith("HiResCAM") and body["heatmap_caption"].endswith("(abnormal score)")


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
    (hostile.EPS, 415, "unsupported type"),
    (hostile.deflated_dicom_bomb(200), 422, "deflated DICOM inflates past"),
    (hostile.dicom_huge_header(), 422, "over the 45000000-pixel limit"),
    (hostile.dicom_text_slope(np.full((64, 64), 900)), 422, "DICOM RescaleSlope is 'one point five'"),
])
def test_bad_uploads_get_4xx_with_one_line_json(client, data, status, message, tmp_path, monkeypatch):
    # A temp folder of this test's own: other processes may write to the machine's /tmp meanwhile.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    r = _post(client, data)
    assert r.status_code == status and r.is_json
    error = r.get_json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert not any(scratch.iterdir())  # nothing written


def test_missing_file_field(client):
    r = client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no file" in r.get_json()["error"]


class Server:
    """`cxr serve` as users run it: its own process, a real loopback socket."""

    def __init__(self, project: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(["cxr", "serve", "--model", "models/cnn", "--port", "0",
                                      *args], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**project_env(ROOT), **(env or {})})
        first = self.proc.stdout.readline()   # printed once the socket listens
        assert first.startswith("cxr serve: "), self.proc.stderr.read()
        self.url = first.split(" on ")[1].split()[0].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    def get(self, path: str, host: str | None = None) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", path, headers={"Host": host} if host else {})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), json.loads(body) if body.startswith(b"{") else {}

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_project):
    srv = Server(tiny_project, "--allowed-host", "xray.example.org", env={"FLASK_DEBUG": "1"})
    yield srv
    srv.close()


def test_server_is_waitress_and_the_debugger_cannot_be_switched_on(server):
    status, headers, body = server.get("/console")   # Werkzeug's debugger console, were it on
    assert status == 404 and headers["Server"] == "cxr" and "error" in body
    status, _, body = server.get("/api/health")
    assert status == 200 and body["model"] == "cnn (keras)"


@pytest.mark.parametrize("host,status", [
    (None, 200), ("localhost", 200), ("xray.example.org:8000", 200),
    ("attacker.example", 400), ("127.0.0.1.attacker.example", 400),
])
def test_requests_for_other_host_names_are_refused(server, host, status):
    got, _, body = server.get("/api/health", host=host)
    assert got == status
    if status == 400:
        assert "error" in body and "\n" not in body["error"]


def _post_raw(url: str, name: str, data: bytes) -> tuple[int, dict]:
    port = int(url.rsplit(":", 1)[1])
    boundary = "cxrboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n").encode() \
        + data + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/api/predict", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    r = conn.getresponse()
    answer = json.loads(r.read())
    conn.close()
    return r.status, answer


def _vm_kb(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def test_hostile_uploads_to_the_real_server_are_refused_and_memory_stays_bounded(server):
    xray = np.asarray(Image.open(IMAGES[0]).convert("L"))
    big16 = hostile.png16_near_limit()
    uploads = [("big16.png", big16, 200)] * 6 + [
        ("bomb.dcm", hostile.deflated_dicom_bomb(1024), 422),
        ("slope.dcm", hostile.dicom_text_slope(xray), 422),
        ("huge.dcm", hostile.dicom_huge_header(), 422),
        ("figure.jpg", hostile.EPS, 415),
        ("phone.jpg", hostile.rotated_jpeg(xray, 3), 200),
    ]
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")   # peak RSS := current RSS
    before = _vm_kb(server.proc.pid, "VmRSS")
    with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
        answers = list(pool.map(lambda u: _post_raw(server.url, u[0], u[1]), uploads))
    assert [status for status, _ in answers] == [expected for _, _, expected in uploads], answers
    assert all("\n" not in a.get("error", "") for _, a in answers)
    # Six concurrent 45-megapixel 16-bit decodes took ~1 GB each before; now two at a time,
    # ~250 MB each (measured: 497 MB for all six).
    growth_mb = (_vm_kb(server.proc.pid, "VmHWM") - before) / 1024
    assert growth_mb < 640, f"server peak RSS grew {growth_mb:.0f} MB"
    assert server.get("/api/health")[0] == 200


def test_idle_connection_is_closed_after_the_timeout(tiny_project):
    srv = Server(tiny_project, "--timeout", "2")
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=120) as s:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\npartial")
            assert s.recv(1024) == b""   # blocks until the server closes the stalled connection
    finally:
        srv.close()


def test_a_request_that_waits_past_the_timeout_for_a_slot_gets_503(predictor):
    from cxr.serve import ServeLimits, create_app
    entered, release = threading.Event(), threading.Event()

    def held_run(x):
        entered.set()
        release.wait()
        return predictor.run(x)

    held = dataclasses.replace(predictor, run=held_run)
    client = create_app(held, ServeLimits(concurrency=1, timeout=0.5)).test_client()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, client, IMAGES[0].read_bytes())
        assert entered.wait(120)                       # the one slot is taken
        r = _post(client, IMAGES[1].read_bytes())
        assert r.status_code == 503 and r.headers["Retry-After"] and "busy" in r.get_json()["error"]
        release.set()
        assert first.result().status_code == 200


def _http_predict(url: str, path: Path) -> dict:
    status, answer = _post_raw(url, path.name, path.read_bytes())
    assert status == 200, answer
    return answer


def test_twenty_concurrent_requests_get_their_own_answers(server):
    images = IMAGES[:5]
    expected = {p.name: _http_predict(server.url, p) for p in images}
    jobs = [images[i % 5] for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda p: _http_predict(server.url, p), jobs))
    for path, result in zip(jobs, results):
        assert result == expected[path.name]


@pytest.mark.browser
def test_page_in_headless_chromium_shows_findings_and_heatmap(server, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists() and (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), \
        "browser test needs Debian's chromium and tests/browser's npm packages: run `make browser-deps`"
    shot = tmp_path / "page.png"
    proc = subprocess.run(["node", "upload.mjs", server.url + "/", str(IMAGES[3]), str(shot)], cwd=BROWSER_DIR,
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


def test_fuzzed_uploads_get_an_answer_or_a_4xx_never_a_5xx(client):
    """Seeded truncations and overwrites of real PNG, JPEG and DICOM files through the app."""
    from conftest import LOWRES
    statuses = {}
    for index, (kind, data) in enumerate(hostile.fuzz_seeds(sorted((LOWRES / "images").glob("*.png"))[:1])):
        for mutant in hostile.mutants(data, 40, seed=index):
            response = _post(client, mutant)
            assert response.status_code in (200, 400, 413, 415, 422), (kind, response.status_code)
            assert response.is_json and ("error" in response.get_json()) == (response.status_code != 200)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(200) and statuses.get(422)   # both kinds of answer exercised
