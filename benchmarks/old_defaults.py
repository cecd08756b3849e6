"""The CPU defaults (configs/base.yaml) before FPN 128, RoIAlign 5x5 and bf16, as overrides of
today's: the benchmarks measure them beside the current defaults in the same run."""

OLD_DEFAULTS = ("model.fpn_channels=256", "model.roi_output_size=7", "train.amp=off",
                "eval.amp=off")
