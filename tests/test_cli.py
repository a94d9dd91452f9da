"""The cxr command and the stages' entry point: fast, and one-line errors."""
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


_STAGE = """
import atexit, sys, threading
from cxr.errors import run_stage

def main():
    atexit.register(lambda: open(sys.argv[1] + "/handler", "w").write("ran"))
    sys.stdout.write("buffered, not flushed")   # stdout is a pipe here
    if len(sys.argv) > 2:   # a non-daemon thread still working when main returns: joined, as on any exit
        # It writes once the main thread has stopped, which only Python's own shutdown does: alive at
        # run_stage's check on any CPU, and never done if the process ended without joining it.
        threading.Thread(target=lambda: (threading.main_thread().join(),
                                         open(sys.argv[1] + "/thread", "w").write("done"))).start()

run_stage(main, "train")
print("not reached")
"""


def test_a_stage_ends_without_teardown_but_runs_its_exit_handlers_and_keeps_its_output(tmp_path):
    for args in ([], ["thread"]):
        proc = subprocess.run([sys.executable, "-c", _STAGE, str(tmp_path), *args], capture_output=True, text=True)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "buffered, not flushed", "")
        assert (tmp_path / "handler").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
