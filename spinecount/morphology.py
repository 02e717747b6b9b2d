"""Spine type from shape: the rule of Rodriguez et al. (2008), with filopodia added.

Rodriguez A, Ehlenberger DB, Dickstein DL, Hof PR, Wearne SL (2008). Automated
three-dimensional detection and shape classification of dendritic spines from fluorescence
microscopy images. PLoS ONE 3(4): e1997. The same rule is used by NeuronStudio:

1. **filopodium** (added here, as in most two-photon studies): long (``length >= 2.0 um``)
   and not mushroom-shaped (no head that qualifies under rule 2);
2. **mushroom**: head/neck diameter ratio above ``head_neck_ratio`` (1.1) and head diameter at
   least ``mushroom_head_um`` (0.35 um);
3. **thin**: otherwise, length/head diameter ratio above ``thin_ratio`` (2.5);
4. **stubby**: the rest.
"""

from __future__ import annotations

import numpy as np

HEAD_NECK_RATIO = 1.1
MUSHROOM_HEAD_UM = 0.35
THIN_RATIO = 2.5
FILOPODIUM_LENGTH_UM = 2.0


def classify_spine(head_diameter_um, neck_diameter_um, length_um, *,
                   head_neck_ratio: float = HEAD_NECK_RATIO,
                   mushroom_head_um: float = MUSHROOM_HEAD_UM,
                   thin_ratio: float = THIN_RATIO,
                   filopodium_length_um: float = FILOPODIUM_LENGTH_UM) -> np.ndarray:
    """Classify spines as stubby, thin, mushroom or filopodium.

    Parameters
    ----------
    head_diameter_um, neck_diameter_um, length_um : array_like
        Head and neck diameters and total length (shaft surface to head tip), micrometres.

    Returns
    -------
    ndarray of str

    Examples
    --------
    >>> classify_spine([1.0, 0.4, 0.6, 0.25], [0.2, 0.4, 0.6, 0.2], [1.5, 1.6, 0.6, 2.8]).tolist()
    ['mushroom', 'thin', 'stubby', 'filopodium']
    """
    head = np.atleast_1d(np.asarray(head_diameter_um, dtype=float))
    neck = np.atleast_1d(np.asarray(neck_diameter_um, dtype=float))
    length = np.atleast_1d(np.asarray(length_um, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        hn = head / neck
        lh = length / head
    out = np.full(head.shape, "stubby", dtype=object)
    thin = lh > thin_ratio
    mushroom = (hn > head_neck_ratio) & (head >= mushroom_head_um)
    filo = (length >= filopodium_length_um) & ~mushroom
    out[thin] = "thin"
    out[mushroom] = "mushroom"
    out[filo] = "filopodium"
    return out.astype(str)
