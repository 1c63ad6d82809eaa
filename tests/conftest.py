"""Shared test setup: offline, and no plugin picked up from the developer's environment by accident."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.pop("HELEXA_DISABLE_PLUGINS", None)
os.environ.pop("HELEXA_STRICT_PLUGINS", None)
