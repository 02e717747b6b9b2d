"""napari plugin of spinecount: open stacks and results, detect spines, review and correct them.

A thin layer over the core (:mod:`spinecount`): reading, detection, measurement and the review
itself (:class:`spinecount.review.ReviewSession`) live there; this package only turns them into
napari layers and widgets.
"""

from spinecount import __version__

__all__ = ["__version__"]
