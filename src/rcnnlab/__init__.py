"""rcnnlab: train, tune, evaluate, diagnose, report and deploy Faster R-CNN detectors.

    from rcnnlab import Detector
    det = Detector.load("runs/demo")
    print(det.predict("house.png")[0].number)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rcnnlab.version import __version__

__all__ = ["Detector", "Result", "__version__"]

if TYPE_CHECKING:
    from rcnnlab.detector import Detector, Result


def __getattr__(name: str) -> Any:
    # torch loads on first use, so that `rcnnlab --version` and the config tools stay quick
    if name in ("Detector", "Result"):
        from rcnnlab import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'rcnnlab' has no attribute {name!r}")
