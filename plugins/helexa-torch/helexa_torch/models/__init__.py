"""Model architectures for the engine: shared layers in `layers`, one small file per family."""
