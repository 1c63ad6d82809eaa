"""helexa: self-hosted LLM serving for GPU fleets.

This module stays tiny on purpose: `helexa --help`, the gateway and every plugin's
entry module import it, so it must never pull in anything heavy.
"""

from importlib.metadata import PackageNotFoundError, version

from helexa.hookspecs import hookimpl

try:
    __version__ = version("helexa")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "hookimpl"]
