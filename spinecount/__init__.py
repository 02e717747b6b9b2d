"""spinecount: count and measure dendritic spines in two-photon stacks.

The heavy modules load on first use, so ``import spinecount`` stays fast.

>>> import spinecount
>>> callable(spinecount.read_stack) and callable(spinecount.detect)
True
"""

from ._version import __version__

_LAZY = {
    "read_stack": "io", "Stack": "io",
    "detect": "detection", "Detection": "detection",
    "DetectionParams": "params", "load_params": "params",
    "match_points": "evaluate",
    "make_stack": "synthetic", "write_synthetic": "synthetic",
    "read_spines": "tables", "read_centerlines": "tables",
    "read_traces": "traces", "classify_spine": "morphology",
    "InputError": "errors", "SpinecountError": "errors",
}  # fmt: skip

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module 'spinecount' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
