"""``cxr serve``: upload a chest X-ray, see the findings and the heatmap.

Uploads are read into memory and decoded by the one image reader; nothing
is written to disk. Inference is serialized by a lock: neither a TFLite
interpreter nor a shared Keras model may be called from two threads at once.
"""
from __future__ import annotations

import base64
import io
import threading

import numpy as np

from cxr import __version__
from cxr.data.images import ImageReadError, read_image, resize_image
from cxr.predict import Predictor

DEFAULT_MAX_MB = 20
_PNG, _JPEG, _DICOM = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"DICM"


def upload_kind(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` by content (not by name); None otherwise."""
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    if data[128:132] == _DICOM:
        return "dicom"
    return None


def _png_base64(pixels: np.ndarray, cam: np.ndarray | None = None) -> str:
    from PIL import Image
    image = Image.fromarray(pixels).convert("RGB")
    if cam is not None:
        from matplotlib import colormaps
        heat = colormaps["jet"](cam)[..., :3] * 255
        alpha = np.where(cam >= 0.05, 0.4, 0.0)[..., None]  # as gradcam.save_overlay: heat only where some
        image = Image.fromarray((np.asarray(image) * (1 - alpha) + heat * alpha).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def create_app(predictor: Predictor, max_mb: float = DEFAULT_MAX_MB):
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    app = Flask("cxr")
    app.config["MAX_CONTENT_LENGTH"] = int(max_mb * 1024 * 1024)
    lock = threading.Lock()

    def error(status: int, message: str):
        return jsonify({"error": message}), status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        return error(413, f"file over the {max_mb:g} MB limit")

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
                        "targets": predictor.targets, "threshold": predictor.threshold, "version": __version__})

    @app.post("/api/predict")
    def predict():
        upload = request.files.get("file")
        if upload is None:
            return error(400, "no file: send multipart/form-data with a 'file' field")
        data = upload.read()
        name = upload.filename or "upload"
        if not data:
            return error(400, f"{name}: empty file")
        if upload_kind(data) is None:
            return error(415, f"{name}: unsupported type; upload a PNG, JPEG or DICOM file")
        try:
            pixels = read_image(data)
        except ImageReadError as e:
            return error(422, f"{name}: {e}")
        with lock:
            result = {"image": name, **predictor.predict_pixels(pixels)}
            if request.args.get("heatmap") == "1":
                small = resize_image(pixels, predictor.size)
                cam = None
                if predictor.keras_model is not None:
                    from cxr.gradcam import grad_cam
                    cam = grad_cam(predictor.keras_model, small[None, ..., None].astype(np.float32))[0]
                result["preview_png"] = _png_base64(small)
                result["heatmap_png"] = None if cam is None else _png_base64(small, cam)
        return jsonify(result)

    @app.get("/")
    def page():
        return PAGE.replace("{{MODEL}}", predictor.name).replace("{{MAX_MB}}", f"{max_mb:g}")

    return app


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
 .abnormal{color:#b00020} .normal{color:#1a7f37}
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
  <figure><img id="heatmap" alt="Grad-CAM heatmap"><figcaption id="heatcap">Grad-CAM: where the abnormal
  score comes from</figcaption></figure>
 </div>
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
  const t = body.threshold === null ? 'no threshold' : 'threshold ' + body.threshold.toFixed(3);
  flag.textContent = (body.abnormal ? 'Abnormal' : 'No abnormality flagged') +
    ' — abnormal score ' + body.abnormal_score.toFixed(3) + ' (' + t + ', chosen on validation data)';
  flag.className = 'flag ' + (body.abnormal ? 'abnormal' : 'normal');
  document.getElementById('preview').src = body.preview_png;
  const heat = document.getElementById('heatmap');
  if (body.heatmap_png) { heat.src = body.heatmap_png; heat.hidden = false; }
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
