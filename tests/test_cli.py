"""The cxr command: fast, and one-line errors."""
import subprocess
import sys

from conftest import ROOT


def test_help_does_not_import_tensorflow():
    code = "import sys; from cxr.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_params_command(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "cxr.cli", "params", str(ROOT / "params.yaml")],
                        capture_output=True, text=True)
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text().replace("workers: auto", "workers: zero"))
    err = subprocess.run([sys.executable, "-m", "cxr.cli", "params", str(bad)], capture_output=True, text=True)
    assert ok.returncode == 0 and '"size": 128' in ok.stdout
    assert err.returncode == 1
    assert err.stderr.strip().endswith("resize.workers: expected 'auto' or an integer in [1, 256], got 'zero'")
