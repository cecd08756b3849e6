"""The trained detector: `Detector` (a run, a checkpoint or an exported file, loaded once) and
the `Result` of each image it predicts on."""

from rcnnlab.detector.core import Detector
from rcnnlab.detector.inputs import images_of
from rcnnlab.detector.result import Result

__all__ = ["Detector", "Result", "images_of"]
