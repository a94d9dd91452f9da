"""Load test for `cxr serve`: concurrent clients send real X-rays and hostile files.

Starts `cxr serve` as users run it (its own process, a loopback socket), then
for ``--seconds`` has ``--clients`` threads post a fixed mix of uploads, each
on a new connection. Prints requests/s, p50/p95 latency, the count of each
status code (per kind of upload), dropped connections, every real X-ray
answer that differs from `cxr predict --json` on the same file, and the
server's peak RSS (the kernel's high-water mark, VmHWM). Writes
reports/load.json.

    python bench/load.py                          # 32 clients, 60 s, the default model
    python bench/load.py --clients 8 --seconds 20 --model models/cnn/export/model_int8.tflite
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import hostile  # noqa: E402

REAL_XRAYS = 40          # bundled images posted as they are
MAX_MB = 20.0


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "cxrloadboundary7d1e"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def uploads() -> list[dict]:
    """The mix: (kind, file name, bytes, expected status). Real X-rays are most of it."""
    images = sorted((ROOT / "data" / "sample" / "images").glob("*.png"))[:REAL_XRAYS]
    xray = np.asarray(Image.open(images[0]).convert("L"))
    items = [{"kind": "xray", "name": p.name, "data": p.read_bytes(), "expect": 200, "path": p} for p in images]
    hostile_files = [
        ("png16_45mpx", "big16.png", hostile.png16_near_limit(), 200),
        ("dicom_deflate_bomb", "bomb.dcm", hostile.deflated_dicom_bomb(2048), 422),
        ("dicom_text_slope", "slope.dcm", hostile.dicom_text_slope(xray), 422),
        ("dicom_gigapixel_header", "huge.dcm", hostile.dicom_huge_header(), 422),
        ("eps", "figure.jpg", hostile.EPS, 415),
        ("truncated_png", "cut.png", images[1].read_bytes()[:2000], 422),
        ("exif_rotated_jpeg", "phone.jpg", hostile.rotated_jpeg(xray, 6), 200),
        ("over_limit", "big.png", images[2].read_bytes() + bytes(int(MAX_MB * 2**20)), 413),
        ("wrong_host", images[3].name, images[3].read_bytes(), 400),
        ("declared_10GB", images[3].name, b"", 413),
    ]
    items += [{"kind": k, "name": n, "data": d, "expect": s} for k, n, d, s in hostile_files]
    for item in items:
        if item["kind"] != "declared_10GB":
            item["body"], item["content_type"] = _multipart(item["name"], item["data"])
    return items


def expected_answers(model: str | None, items: list[dict], cwd: Path) -> dict[str, dict]:
    """`cxr predict --json` on the real X-rays: what the server must answer."""
    paths = [str(i["path"]) for i in items if i["kind"] == "xray"]
    cmd = ["cxr", "predict", "--json", *paths] + (["--model", model] if model else [])
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True).stdout
    answers = {}
    for line in out.splitlines():
        answer = json.loads(line)
        answers[Path(answer.pop("image")).name] = answer
    return answers


def post(port: int, item: dict, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if item["kind"] == "declared_10GB":   # headers only: refused before any body is read
            conn.putrequest("POST", "/api/predict")
            conn.putheader("Content-Type", "multipart/form-data; boundary=x")
            conn.putheader("Content-Length", str(10 * 2**30))
            conn.endheaders()
        else:
            headers = {"Content-Type": item["content_type"]}
            if item["kind"] == "wrong_host":
                headers["Host"] = "attacker.example"
            conn.request("POST", "/api/predict", body=item["body"], headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc (Linux only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="as for cxr serve (default: the best variant on validation)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=2, help="cxr serve --concurrency")
    ap.add_argument("--out", default=str(ROOT / "reports" / "load.json"))
    args = ap.parse_args()

    t = time.perf_counter()
    items = uploads()
    print(f"load: {len(items)} uploads prepared in {time.perf_counter() - t:.1f} s "
          f"({sum(i['kind'] == 'xray' for i in items)} real X-rays)", flush=True)
    expected = expected_answers(args.model, items, ROOT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    server = subprocess.Popen(["cxr", "serve", "--port", "0", "--concurrency", str(args.concurrency),
                               "--max-mb", str(MAX_MB)] + (["--model", args.model] if args.model else []),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = server.stdout.readline()
    if not first.startswith("cxr serve: "):
        sys.exit(f"load: cxr serve did not start: {server.stderr.read()[-2000:]}")
    port = int(first.split(" on ")[1].split()[0].rstrip("/").rsplit(":", 1)[1])
    threading.Thread(target=server.stderr.read, daemon=True).start()   # keep its log pipe drained
    rss_idle = peak_rss_mb(server.pid)

    # The order repeats: every client sends the whole mix, from its own offset.
    lock = threading.Lock()
    latencies, by_kind = defaultdict(list), defaultdict(Counter)
    statuses, wrong, dropped, unexpected = Counter(), [], Counter(), Counter()
    deadline = time.monotonic() + args.seconds

    def client(offset: int) -> None:
        for item in itertools.islice(itertools.cycle(items), offset, None):
            if time.monotonic() >= deadline:
                return
            t0 = time.perf_counter()
            try:
                status, body = post(port, item, timeout=120)
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    dropped[f"{item['kind']}: {type(e).__name__}"] += 1
                continue
            took = time.perf_counter() - t0
            with lock:
                latencies[item["kind"] == "xray"].append(took)
                statuses[status] += 1
                by_kind[item["kind"]][status] += 1
                if status != item["expect"]:
                    unexpected[f"{item['kind']}: {status}"] += 1
                if item["kind"] == "xray" and status == 200:
                    answer = json.loads(body)
                    answer.pop("image")
                    if answer != expected[item["name"]]:
                        wrong.append(item["name"])

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i * len(items) // args.clients,)) for i in range(args.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - started
    rss_peak = peak_rss_mb(server.pid)
    server.terminate()
    server.wait(timeout=60)

    every = latencies[True] + latencies[False]
    q = lambda xs, p: float(np.percentile(xs, p)) * 1000 if xs else None  # noqa: E731
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, {platform.python_version()}",
        "model": first.split(" on ")[0].removeprefix("cxr serve: "), "clients": args.clients,
        "seconds": round(elapsed, 1), "server_concurrency": args.concurrency,
        "requests": len(every), "requests_per_s": round(len(every) / elapsed, 2),
        "latency_ms": {"p50": q(every, 50), "p95": q(every, 95),
                       "xray_p50": q(latencies[True], 50), "xray_p95": q(latencies[True], 95)},
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "status_by_kind": {k: {str(s): n for s, n in sorted(c.items())} for k, c in sorted(by_kind.items())},
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "dropped_connections": dict(dropped), "unexpected_status": dict(unexpected),
        "xray_answers_checked": sum(by_kind["xray"].values()), "xray_answers_differing_from_predict": len(wrong),
        "server_rss_mb": {"idle": round(rss_idle), "peak": round(rss_peak)},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_ms"]
    print(f"load: {result['requests']} requests in {result['seconds']} s from {args.clients} clients = "
          f"{result['requests_per_s']} req/s; latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms "
          f"(real X-rays p50 {lat['xray_p50']:.0f} ms, p95 {lat['xray_p95']:.0f} ms)")
    print(f"load: status codes {result['status_counts']}; 5xx {result['server_errors_5xx']}; "
          f"dropped connections {sum(dropped.values())} {dict(dropped) or ''}; unexpected {dict(unexpected) or 0}")
    for kind, counts in result["status_by_kind"].items():
        print(f"load:   {kind:24s} {counts}")
    print(f"load: real X-ray answers checked {result['xray_answers_checked']}, differing from cxr predict "
          f"{len(wrong)}; server peak RSS {rss_peak:.0f} MB (idle {rss_idle:.0f} MB); wrote {args.out}")


if __name__ == "__main__":
    main()
