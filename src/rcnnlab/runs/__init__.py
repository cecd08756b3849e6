"""What a run leaves behind and how to read it back: the run folder, checkpoints, the device.

Every layer above the models may use this package; it imports only the config and the models.
"""
