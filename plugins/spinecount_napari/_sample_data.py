"""napari sample data: the bundled real crop and a synthetic stack, each with its truth."""

from __future__ import annotations

from spinecount.samples import REAL_CROP, SYNTHETIC, sample_path


def real_crop() -> list[tuple]:
    """Crop of a real in-vivo two-photon stack (rr30a, MIT licence) with a human's annotation."""
    return _sample(REAL_CROP, "_backbone.csv", "rr30a crop", "annotated")


def synthetic() -> list[tuple]:
    """A synthetic stack (spinecount.synthetic) with its true dendrites and spines."""
    return _sample(SYNTHETIC, "_centerlines.csv", "synthetic", "true")


def _sample(file: str, centerlines: str, name: str, truth: str) -> list[tuple]:
    from spinecount.io import read_stack
    from spinecount.tables import read_centerlines, read_spines

    from ._layers import dendrites_layer, image_layer, spines_layer

    path = sample_path(file)
    stack = read_stack(path)
    stem = str(path.with_suffix(""))
    data, kw, kind = spines_layer(read_spines(f"{stem}_spines.csv"), stack.voxel_size,
                                  name=f"{name} {truth} spines")
    # truth is for comparison only: hollow markers, not tied to a result folder
    kw.update(face_color="transparent", border_color="#F0E442", metadata={})
    return [image_layer(stack, name=name),
            dendrites_layer(read_centerlines(f"{stem}{centerlines}"), stack.voxel_size,
                            name=f"{name} {truth} dendrites"),
            (data, kw, kind)]
