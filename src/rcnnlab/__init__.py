"""rcnnlab: train, tune, evaluate, diagnose and report Faster R-CNN detectors."""

__version__ = "0.1.0"
