"""``cxr serve``: upload a chest X-ray, see the findings and the heatmap.

Served by waitress (a production WSGI server; no debugger exists to switch
on). Large bodies wait in anonymous temporary files (never named on disk);
an upload is read into memory and decoded by the one image reader only
when its turn comes. At most ``concurrency`` uploads are decoded and
predicted at once, so memory stays bounded however many clients connect; a
request that waits longer than ``timeout`` for its turn gets 503. Inference is
serialized by a lock: neither a TFLite interpreter nor a shared Keras model
may be called from two threads at once. Requests naming a Host that is not
the bound address or an allowed name get 400 (DNS rebinding).
"""
from __future__ import annotations

import base64
import html
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cxr import __version__
from cxr.data.images import ImageReadError, UnsupportedImageError, read_image, resize_image
from cxr.predict import Predictor

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServeLimits:
    max_mb: float = 20.0          # upload size limit
    concurrency: int = 2          # uploads decoded / predicted at once
    timeout: float = 30.0         # s: idle connection, and wait for a decode slot
    connections: int = 100        # open connections; more wait in the listen backlog
    threads: int = 8              # waitress worker threads (waiting for a slot is cheap)


def trusted_hosts(host: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """Host header values accepted for a server bound to ``host``.

    A wildcard bind (0.0.0.0, ::) has no name of its own: only loopback names
    and those the operator lists are accepted there.
    """
    names = [] if host in ("0.0.0.0", "::", "") else [host]
    if host in LOOPBACK_NAMES or not names:
        names += LOOPBACK_NAMES
    names += allowed
    # Werkzeug compares the Host without its port; IPv6 literals arrive bracketed.
    return list(dict.fromkeys(f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names))


def _png_base64(rgb: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def create_app(predictor: Predictor, limits: ServeLimits = ServeLimits(), hosts: list[str] | None = None):
    """The Flask app; ``hosts``: accepted Host names (None: any, for in-process test clients)."""
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    app = Flask("cxr")
    app.debug = False
    app.config.update(MAX_CONTENT_LENGTH=int(limits.max_mb * 1024 * 1024), MAX_FORM_PARTS=16,
                      TRUSTED_HOSTS=hosts, PROPAGATE_EXCEPTIONS=False)
    # Decoding runs on these threads only: it bounds how many uploads are in memory at once,
    # and keeps the large transient buffers in their few malloc arenas (on waitress's 8
    # threads, each arena kept its own freed ~140 MB: 6 uploads grew the server by 840 MB).
    decoders = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="cxr-decode")
    model_lock = threading.Lock()

    def error(status: int, message: str):
        return jsonify({"error": message}), status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        return error(413, f"file over the {limits.max_mb:g} MB limit")

    @app.errorhandler(HTTPException)
    def http_error(e):
        return error(e.code or 500, e.description.splitlines()[0] if e.description else e.name)

    @app.errorhandler(Exception)
    def unexpected(e):  # a bug, never a traceback to the client
        app.logger.exception("predict failed")
        return error(500, f"internal error ({type(e).__name__})")

    @app.get("/api/health")
    def health():
        return jsonify({"status": "ok", "model": predictor.name, "variant": predictor.variant,
                        "targets": predictor.targets, "decision": predictor.decision,
                        "threshold": predictor.threshold, "flags": predictor.flags, "version": __version__})

    def analyse(upload, name: str, heatmap: bool) -> tuple[int, dict]:
        """Decode, resize and predict one upload: runs on a decoder thread."""
        data = upload.read()  # the upload is in memory only from here
        if not data:
            return 400, {"error": f"{name}: empty file"}
        try:
            pixels = read_image(data)
        except UnsupportedImageError:
            return 415, {"error": f"{name}: unsupported type; upload a PNG, JPEG or DICOM file"}
        except ImageReadError as e:
            return 422, {"error": f"{name}: {e}"}
        del data
        small = resize_image(pixels, predictor.size)
        del pixels
        with model_lock:
            result = {"image": name, **predictor.predict_resized(small)}
            if heatmap:
                from cxr.gradcam import caption, is_empty, overlay
                cam = predictor.heatmap(small)
                result["preview_png"] = _png_base64(overlay(small, None))
                result["heatmap_png"] = None if cam is None else _png_base64(overlay(small, cam))
                result["heatmap_empty"] = None if cam is None else is_empty(cam)
                result["heatmap_caption"] = (None if cam is None else
                                             caption(predictor.heatmap_method, cam) + f" ({predictor.decision} score)")
        return 200, result

    @app.post("/api/predict")
    def predict():
        upload = request.files.get("file")
        if upload is None:
            return error(400, "no file: send multipart/form-data with a 'file' field")
        name = (upload.filename or "upload")[:200]
        heatmap = request.args.get("heatmap") == "1"  # read here: the request context stays on this thread
        started = threading.Event()

        def job():
            started.set()
            return analyse(upload, name, heatmap)

        future = decoders.submit(job)
        if not started.wait(limits.timeout) and future.cancel():
            return error(503, "server busy: try again shortly")[0], 503, {"Retry-After": "5"}
        status, body = future.result()
        return jsonify(body), status

    @app.get("/")
    def page():
        return (PAGE.replace("{{MODEL}}", html.escape(predictor.name)).replace("{{MAX_MB}}", f"{limits.max_mb:g}")
                .replace("{{DECISION}}", html.escape(predictor.decision)))

    return app


def make_server(app, host: str, port: int, limits: ServeLimits = ServeLimits()):
    """A waitress server for ``app`` (port 0: any free port, see ``effective_port``)."""
    from waitress import create_server
    slack = 64 * 1024  # multipart framing around the file
    return create_server(app, host=host, port=port, threads=limits.threads, connection_limit=limits.connections,
                         channel_timeout=max(1, round(limits.timeout)),
                         cleanup_interval=max(1, min(30, round(limits.timeout / 2))),  # how often idle ones are cut
                         max_request_body_size=int(limits.max_mb * 2**20) + slack,
                         clear_untrusted_proxy_headers=True, ident="cxr")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxr: chest X-ray findings</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 16px;color:#1b1f24}
 .note{background:#fff4e5;border:1px solid #f0b060;padding:8px 12px;border-radius:6px}
 #drop{border:2px dashed #8893a0;border-radius:8px;padding:28px;text-align:center;margin:16px 0;cursor:pointer}
 #drop.over{background:#eef4ff}
 .row{display:flex;gap:20px;flex-wrap:wrap} .row figure{margin:0} .row img{width:300px;border-radius:4px}
 #error{color:#b00020;font-weight:600} .flag{font-size:1.2em;font-weight:700}
 .positive{color:#b00020} .negative{color:#1a7f37}
 ul#findings{list-style:none;padding:0;width:420px} ul#findings li{display:flex;align-items:center;margin:3px 0}
 ul#findings span.name{width:150px} ul#findings span.bar{height:12px;background:#4a78c2;border-radius:2px;margin:0 8px}
</style></head>
<body>
<h1>Chest X-ray findings</h1>
<p class="note">Research tool, <b>not a diagnosis</b>. Labels were mined from radiology reports by NLP; a
radiologist must read every study. Model: <code>{{MODEL}}</code>.</p>
<div id="drop">Drop a PNG, JPEG or DICOM file here, or <label><u>choose one</u>
<input id="file" type="file" accept=".png,.jpg,.jpeg,.dcm,.dicom" hidden></label> (up to {{MAX_MB}} MB)</div>
<p id="error" role="alert"></p>
<div id="result" hidden>
 <p id="flag" class="flag"></p>
 <div class="row">
  <figure><img id="preview" alt="uploaded X-ray"><figcaption>image as the model sees it</figcaption></figure>
  <figure><img id="heatmap" alt="heatmap of the {{DECISION}} score"><figcaption id="heatcap">where the
  {{DECISION}} score comes from</figcaption></figure>
 </div>
 <p id="warnings" class="warnings"></p>
 <h2>Findings</h2><ul id="findings"></ul>
</div>
<script>
const drop = document.getElementById('drop'), input = document.getElementById('file');
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]); });
input.addEventListener('change', () => { if (input.files.length) send(input.files[0]); });
async function send(file) {
  const err = document.getElementById('error'), out = document.getElementById('result');
  err.textContent = ''; out.hidden = true;
  const form = new FormData(); form.append('file', file);
  let body;
  try {
    const r = await fetch('/api/predict?heatmap=1', {method: 'POST', body: form});
    body = await r.json();
    if (!r.ok) { err.textContent = body.error || ('HTTP ' + r.status); return; }
  } catch (e) { err.textContent = 'upload failed: ' + e; return; }
  const flag = document.getElementById('flag');
  const positive = body[body.decision], score = body[body.decision + '_score'];
  flag.textContent = (positive ? body.decision.toUpperCase() : 'No ' + body.decision + ' flagged') +
    ' — ' + body.decision + ' score ' + score.toFixed(3) + ' (threshold ' + body.threshold.toFixed(3) +
    ', chosen on validation data)';
  flag.className = 'flag ' + (positive ? 'positive' : 'negative');
  document.getElementById('warnings').textContent = body.flags.length ?
    'Do not act on this answer. ' + body.flags.join(' | ') : '';
  document.getElementById('preview').src = body.preview_png;
  const heat = document.getElementById('heatmap');
  if (body.heatmap_png) { heat.src = body.heatmap_png; heat.hidden = false;
    document.getElementById('heatcap').textContent = body.heatmap_caption; }
  else { heat.hidden = true; document.getElementById('heatcap').textContent = 'no heatmap for this model format'; }
  const list = document.getElementById('findings'); list.innerHTML = '';
  Object.entries(body.findings).sort((a, b) => b[1] - a[1]).forEach(([name, p]) => {
    const li = document.createElement('li');
    li.innerHTML = '<span class="name"></span><span class="bar"></span><span class="p"></span>';
    li.querySelector('.name').textContent = name;
    li.querySelector('.bar').style.width = Math.round(p * 200) + 'px';
    li.querySelector('.p').textContent = p.toFixed(3);
    list.appendChild(li);
  });
  out.hidden = false;
}
</script>
</body></html>
"""
