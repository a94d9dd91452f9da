"""How TensorFlow computes on a CPU: fixed before it starts, so results do not depend on the core count
or the instruction set.

Two settings move float results between machines (measured, see README
"Reproducing results"): the instruction set oneDNN's kernels pick at run
time (TensorFlow's matrix products go through oneDNN even with
``TF_ENABLE_ONEDNN_OPTS=0``), and the number of threads a reduction is split
over (TensorFlow sizes its pools from the cores it may use). Both are read
from the environment when TensorFlow starts, so stages call ``configure``
before importing it. Another CPU model still trains networks differently
(kernels block their sums by its cache sizes): measured in the README.
"""
from __future__ import annotations

import os
import sys

from cxr.params import CPU_ISAS, ComputeParams


def environment(compute: ComputeParams) -> dict[str, str]:
    """The environment variables that pin ``compute`` for TensorFlow and oneDNN."""
    # Inter-op threads only run independent ops side by side: they do not change results
    # (measured), and one of them made training 40% slower.
    return {"ONEDNN_MAX_CPU_ISA": CPU_ISAS[compute.max_cpu_isa], "TF_NUM_INTRAOP_THREADS": str(compute.threads)}


def configure(compute: ComputeParams) -> None:
    """Apply ``compute`` to this process; it must run before TensorFlow is imported."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("cxr.compute.configure must run before TensorFlow is imported")
    os.environ.update(environment(compute))
