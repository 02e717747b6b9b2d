"""Imported once by the process that forks the workers of a local cluster (see
``spinecount.experiment``): every worker then starts with spinecount and skan imported and
spinecount's numba code loaded (:func:`spinecount.tracing._warm_numba`), which would otherwise
cost each worker about 2 s before its first stack."""

import importlib

from .tracing import _warm_numba

for _name in ("experiment", "plots", "results"):  # what process_stack imports
    importlib.import_module(f"{__package__}.{_name}")
_warm_numba(wait=True)
