"""Model families, shaped like ``keras.applications``: a builder per family, one registry.

Every model takes a 1-channel image of ``size`` x ``size`` in the 0..255
range (named input ``image``) and returns probabilities (named output
``probabilities``; a sigmoid per finding, or one softmax over classes): scaling and gray -> 3-channel repetition live inside the
model, so exported TFLite / Core ML models need no outside preprocessing.
"""
from cxr.models.registry import MODELS, ModelSpec, build_model, check_weights

__all__ = ["MODELS", "ModelSpec", "build_model", "check_weights"]
