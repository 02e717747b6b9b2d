"""skan's skeleton graph, with its paths walked by a kernel that numba compiles once per
installation.

:class:`skan.Skeleton` walks the skeleton's paths (and measures their lengths) in numba code
that takes a numba class, which numba cannot cache on disk (skan: "cache with Numba 1.0"):
every new Python process compiled it again, 6-7 s of the first stack's time on a two-core
machine. :class:`Skeleton` is skan's class with the same graph (:func:`skan.csr.
skeleton_to_csgraph`), the same paths in the same order and the same lengths, walked by
:func:`_walk_paths` over plain arrays, which numba caches. Everything else (``summarize``,
``path_coordinates``, ...) is skan's.
"""

from __future__ import annotations

import numba
import numpy as np
import skan
from scipy import sparse


class Skeleton(skan.Skeleton):
    """:class:`skan.Skeleton` of a skeleton image, its paths walked by a kernel cached on disk.

    Parameters
    ----------
    skeleton_image : ndarray
        The skeleton (nonzero voxels, one voxel thin).
    spacing : float or sequence of float
        The voxel size along each axis.

    Examples
    --------
    >>> img = np.zeros((1, 7, 7), bool)
    >>> img[0, 3, :] = img[0, :, 3] = True
    >>> sk = Skeleton(img, spacing=(1.0, 0.5, 0.5))
    >>> sk.n_paths, sk.path_lengths().tolist()
    (4, [1.5, 1.5, 1.5, 1.5])
    >>> skan.summarize(sk, separator="_")["branch_type"].tolist()
    [1, 1, 1, 1]
    """

    def __init__(self, skeleton_image, *, spacing=1):
        graph, coords = skan.csr.skeleton_to_csgraph(skeleton_image, spacing=spacing)
        self.pixel_values = (None if skeleton_image.dtype == bool
                             else skeleton_image[coords].astype(float))
        self.graph = graph
        self.coordinates = np.transpose(coords)
        self.paths, self.distances = _path_graph(graph, self.pixel_values)
        self.n_paths = self.paths.shape[0]
        self._distances_initialized = True
        self.skeleton_image = skeleton_image
        self.skeleton_shape = skeleton_image.shape
        self.skeleton_dtype = skeleton_image.dtype
        self.source_image = None
        self.keep_images = True
        self.degrees = np.diff(graph.indptr)
        self.spacing = (np.asarray(spacing) if not np.isscalar(spacing)
                        else np.full(skeleton_image.ndim, spacing))

    @property
    def nbgraph(self):
        """skan's numba graph, built only where skan's own code asks for it."""
        return skan.csr.csr_to_nbgraph(self.graph, self.pixel_values)


def _path_graph(graph, values=None):
    """The paths of a pixel graph as skan numbers and stores them (a sparse matrix of path x
    visited node, the data `values` at the nodes or 1), and each path's length."""
    indptr = graph.indptr.astype(np.int64)
    indices = graph.indices.astype(np.int64)
    degrees = np.diff(indptr)
    # the buffers skan allocates (:func:`skan.csr._build_skeleton_path_graph`)
    buffer = indices.size // 4
    ends = degrees[degrees != 2]
    path_indptr = np.zeros(int(ends.sum()) + buffer, np.int64)
    path_indices = np.zeros(indices.size + int(np.maximum(0, ends - 1).sum()) + buffer,
                            np.int64)
    lengths = np.zeros(len(path_indptr), float)
    m, n = _walk_paths(indptr, indices, np.asarray(graph.data, float), degrees, path_indptr,
                       path_indices, lengths)
    data = np.ones(n) if values is None else np.asarray(values, float)[path_indices[:n]]
    paths = sparse.csr_matrix((data, path_indices[:n], path_indptr[:m]), shape=(m - 1, n))
    return paths, lengths[:m - 1].copy()


@numba.njit(cache=True, nogil=True)
def _edge(indptr, indices, u, v):
    """Where the edge (u, v) is stored in a CSR graph; -1 where there is none."""
    for k in range(indptr[u], indptr[u + 1]):
        if indices[k] == v:
            return k
    return -1


@numba.njit(cache=True, nogil=True)
def _walk_paths(indptr, indices, weights, degrees, path_indptr, path_indices, lengths):
    """skan's walk (``_build_paths``, ``_walk_path``): from every tip and junction along each
    edge not yet walked until the next tip or junction, then round the cycles left; each
    path's nodes into `path_indices`, its end into `path_indptr`, its length (the sum of its
    edges' `weights`, in order) into `lengths`. Returns the number of `path_indptr` entries
    and of `path_indices` entries used."""
    visited = np.zeros(indices.size, np.bool_)
    n_paths = 0
    j = 0
    for cycles in range(2):
        for node in range(degrees.size):
            if cycles == 0 and not (degrees[node] > 2 or degrees[node] == 1):
                continue
            if cycles == 1 and degrees[node] == 0:
                continue
            stop = indptr[node] + 1 if cycles == 1 else indptr[node + 1]
            for k in range(indptr[node], stop):
                if visited[k]:
                    continue
                start, u, v, e = node, node, indices[k], k
                path_indices[j] = u
                j += 1
                d = 0.0
                while True:
                    visited[e] = True
                    visited[_edge(indptr, indices, v, u)] = True
                    path_indices[j] = v
                    j += 1
                    d += weights[e]
                    if degrees[v] != 2 or v == start:
                        break
                    a = indptr[v]
                    nxt = indices[a] if indices[a] != u else indices[a + 1]
                    u, v = v, nxt
                    e = _edge(indptr, indices, u, v)
                    if visited[e]:
                        break
                lengths[n_paths] = d
                n_paths += 1
                path_indptr[n_paths] = j
    return n_paths + 1, j
