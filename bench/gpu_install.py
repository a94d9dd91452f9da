"""Does the GPU install resolve? `pip install --dry-run "tensorflow[and-cuda]==VERSION"` in this venv.

    python bench/gpu_install.py 2.21.0      # the version requirements.txt pins for tensorflow-cpu

Prints what pip would install (TensorFlow and NVIDIA's CUDA wheels) and writes
reports/gpu_install.json; exit 1 if it does not resolve to that TensorFlow version.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    version = sys.argv[1]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                           "--report", "-", f"tensorflow[and-cuda]=={version}"], capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        print(f"gpu_install: tensorflow[and-cuda]=={version} does not resolve: "
              f"{proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    resolved = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(proc.stdout)["install"]}
    nvidia = sorted(name for name in resolved if name.startswith("nvidia-"))
    report = {"requested": f"tensorflow[and-cuda]=={version}", "tensorflow": resolved.get("tensorflow"),
              "nvidia_wheels": {name: resolved[name] for name in nvidia}, "packages": len(resolved),
              "seconds": seconds}
    (ROOT / "reports" / "gpu_install.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"tensorflow {report['tensorflow']} with {len(nvidia)} NVIDIA wheels "
          f"({', '.join(f'{n} {resolved[n]}' for n in nvidia)}); {len(resolved)} packages, resolved in {seconds} s")
    return 0 if report["tensorflow"] == version else 1


if __name__ == "__main__":
    sys.exit(main())
