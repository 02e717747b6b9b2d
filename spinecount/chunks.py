"""Overlapping lateral chunks (tiles) of a stack: detection one chunk at a time, in parallel.

A tile holds every z slice of a rectangle of the working grid (its *core*) plus a margin on each
side (its *extent*). Each voxel is computed in the tile whose core holds it, from the tile's
extent; the margin is wide enough for every filter and distance a voxel's value depends on, so
the result is the same as in one piece. Tiles run on a dask thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Working volumes larger than this many voxels are processed in chunks by default.
AUTO_CHUNK_VOXELS = 1 << 26
#: Lateral chunk size (um) used when chunking is automatic.
AUTO_CHUNK_UM = 64.0


@dataclass(frozen=True)
class Tile:
    """A lateral chunk: `core` and `ext` are (y, x) slices of the working grid."""

    core: tuple[slice, slice]
    ext: tuple[slice, slice]

    @property
    def inner(self) -> tuple[slice, slice, slice]:
        """The core as an index into an array covering the extent (all z)."""
        return (slice(None),) + tuple(slice(c.start - e.start, c.stop - e.start)
                                      for c, e in zip(self.core, self.ext))

    @property
    def origin(self) -> np.ndarray:
        """Working-grid index (z, y, x) of the extent's first voxel."""
        return np.array([0, self.ext[0].start, self.ext[1].start])

    def lattice(self, step: int) -> tuple[slice, slice, slice]:
        """Index into the extent of the core's voxels on the global lattice (every `step`-th
        row and column of the working grid)."""
        return (slice(None),) + tuple(
            slice(-(-c.start // step) * step - e.start, c.stop - e.start, step)
            for c, e in zip(self.core, self.ext))


def plan_tiles(shape, *, tile_px, halo_px: int) -> list[Tile]:
    """Tiles covering a (z, y, x) working grid laterally.

    Parameters
    ----------
    shape : tuple
        Shape of the working grid.
    tile_px : int, (int, int) or None
        Lateral core size in voxels (y and x); None (or a size covering the grid) gives one
        tile.
    halo_px : int
        Margin on each side of a core.

    Examples
    --------
    >>> [t.core for t in plan_tiles((5, 10, 6), tile_px=4, halo_px=2)][:2]
    [(slice(0, 4, None), slice(0, 4, None)), (slice(0, 4, None), slice(4, 6, None))]
    >>> plan_tiles((5, 10, 6), tile_px=4, halo_px=2)[1].ext
    (slice(0, 6, None), slice(2, 6, None))
    >>> len(plan_tiles((5, 10, 6), tile_px=None, halo_px=2))
    1
    """
    ny, nx = shape[1], shape[2]
    ty, tx = (int(v) for v in np.broadcast_to(ny if tile_px is None else tile_px, (2,)))
    if ty >= ny and tx >= nx:
        whole = (slice(0, ny), slice(0, nx))
        return [Tile(whole, whole)]
    ty, tx = max(ty, 1), max(tx, 1)
    tiles = []
    for y0 in range(0, ny, ty):
        for x0 in range(0, nx, tx):
            y1, x1 = min(y0 + ty, ny), min(x0 + tx, nx)
            tiles.append(Tile((slice(y0, y1), slice(x0, x1)),
                              (slice(max(y0 - halo_px, 0), min(y1 + halo_px, ny)),
                               slice(max(x0 - halo_px, 0), min(x1 + halo_px, nx)))))
    return tiles


def map_tiles(func, tiles: list[Tile], *, threads: int | None = None) -> list:
    """``[func(tile) for tile in tiles]``, on a dask thread pool when there are several tiles.

    The heavy steps (scipy.ndimage filters and distance transforms) release the GIL, so threads
    run them in parallel; memory is about `threads` tiles' worth.
    """
    if len(tiles) == 1 or threads == 1:
        return [func(t) for t in tiles]
    import dask

    return list(dask.compute(*[dask.delayed(func)(t) for t in tiles], scheduler="threads",
                             num_workers=threads))


def assemble_lattice(blocks, shape, step: int, tiles: list[Tile]) -> np.ndarray:
    """Put per-tile lattice samples (from ``array[tile.lattice(step)]``) into one array of the
    whole grid's lattice."""
    ny, nx = -(-shape[1] // step), -(-shape[2] // step)
    out = np.empty((shape[0], ny, nx), np.float32)
    for t, b in zip(tiles, blocks):
        iy, ix = -(-t.core[0].start // step), -(-t.core[1].start // step)
        out[:, iy:iy + b.shape[1], ix:ix + b.shape[2]] = b
    return out
