"""The CPU defaults (configs/base.yaml) before the speed work of issue 14, as overrides of
today's: the benchmarks measure them beside the current defaults in the same run."""

OLD_DEFAULTS = ("model.fpn_channels=256", "model.roi_output_size=7", "train.amp=off",
                "eval.amp=off")
