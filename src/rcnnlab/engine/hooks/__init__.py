"""Training-time features, one hook a file (see `rcnnlab.engine.loop.HookBase`)."""
