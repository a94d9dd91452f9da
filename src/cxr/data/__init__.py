"""Data: metadata, labels, patient-aware splits, the image reader and the resize cache."""
from cxr.data.metadata import FINDINGS, NO_FINDING, read_metadata
from cxr.data.split import patient_split

__all__ = ["FINDINGS", "NO_FINDING", "read_metadata", "patient_split"]
