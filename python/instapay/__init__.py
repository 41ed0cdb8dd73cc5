"""instapay: a real-time payment engine with a Rust core.

The native module is ``instapay._core`` (typed in ``_core.pyi``); the modules of this package put
a typed Python API on top of it, one concept per module, in the order the data flows (see
DESIGN.md): ``signing`` first.
"""

from importlib.metadata import version

__version__ = version("instapay")
