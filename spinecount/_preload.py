"""Imported once by the process that forks the workers of a local cluster (see
``spinecount.experiment``): every worker then starts with spinecount imported and skan's numba
code compiled, which would otherwise cost each worker about 3 s before its first stack."""

from . import experiment, plots, results  # noqa: F401  (what process_stack imports)
from .detection import _warm_skan

_warm_skan(wait=True)
