"""helexa-torch: helexa's default harness, a native PyTorch engine.

Importing this package is cheap; torch and transformers are imported by the
modules that need them, which the plugin's factories import lazily.
"""
