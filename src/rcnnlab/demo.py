"""`rcnnlab demo`: the main job end to end on the embedded default data.

Generated house numbers -> train the CPU default -> the pipeline after training (tune the
threshold on valid, evaluate on test, the run record) -> pred.json / pred.csv of the test
split and a short summary with two figures. Valid and test are each detected once.
"""

from __future__ import annotations

import time

from rcnnlab import api
from rcnnlab.config import Config
from rcnnlab.data.categories import digit_names
from rcnnlab.reporting.demo_summary import write_demo_summary
from rcnnlab.reporting.predictions import write_predictions
from rcnnlab.runs.rundir import RunDir


def run_demo(cfg: Config, *, reporter=None, n_samples: int = 12) -> dict[str, str]:
    """Run the whole job for `cfg`; returns the headline figures (also written to summary.md)."""
    start = time.perf_counter()
    # the record is written once, after tuning and testing; and the demo is deterministic:
    # run again, it starts its folder over and gives the same figures
    fit = api.train(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"record": False})}), exist_ok=True, reporter=reporter)
    done = api.finish_run(api.trained(fit), validation=fit.validation,
                          record=cfg.train.record)
    test = done.results["test"]
    RunDir(fit.run_dir).write_eval("test", test.as_dict())
    # what `rcnnlab predict` would write for the test json
    outputs = write_predictions(fit.run_dir, test.detections,
                                [img["id"] for img in test.data.images],
                                digit_names(test.data.categories), test.threshold,
                                cfg.eval.read_iou)
    return write_demo_summary(cfg, fit, test, outputs,
                              wall_seconds=time.perf_counter() - start, n_samples=n_samples)
