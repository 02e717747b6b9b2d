"""Synthetic ground truth: deterministic, consistent with itself and with the column contract."""

import numpy as np
import pytest

from spinecount.io import read_stack
from spinecount.morphology import classify_spine
from spinecount.synthetic import make_stack, write_synthetic
from spinecount.tables import SPINE_COLUMNS, DENDRITE_COLUMNS, polyline_length, read_spines


@pytest.fixture(scope="module")
def syn():
    return make_stack(shape_um=(12, 30, 30), seed=11)


def test_deterministic_from_seed(syn):
    again = make_stack(shape_um=(12, 30, 30), seed=11)
    np.testing.assert_array_equal(syn.stack.data, again.stack.data)
    assert syn.spines.equals(again.spines)
    other = make_stack(shape_um=(12, 30, 30), seed=12)
    assert not np.array_equal(syn.stack.data, other.stack.data)


def test_columns_are_the_detector_contract(syn):
    assert list(syn.spines.columns[: len(SPINE_COLUMNS)]) == list(SPINE_COLUMNS)
    assert list(syn.dendrites.columns[: len(DENDRITE_COLUMNS)]) == list(DENDRITE_COLUMNS)


def test_spine_geometry_is_consistent(syn):
    sp = syn.spines
    assert len(sp) > 10
    head = sp[["z_um", "y_um", "x_um"]].to_numpy()
    base = sp[["base_z_um", "base_y_um", "base_x_um"]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(head - base, axis=1), sp["shaft_distance_um"])
    np.testing.assert_allclose(sp["length_um"], sp["shaft_distance_um"]
                               + sp["head_diameter_um"] / 2)
    assert np.all(head >= 0) and np.all(head <= np.array(syn.stack.shape_um))
    # every type is drawn, and the documented rule gives the intended type
    many = make_stack(shape_um=(12, 40, 40), spine_density=1.0, seed=3).spines
    assert set(many["type"]) == {"stubby", "thin", "mushroom", "filopodium"}
    assert (many["type"] == many["intended_type"]).all()
    again = classify_spine(many["head_diameter_um"], many["neck_diameter_um"], many["length_um"])
    assert (again == many["type"]).all()


def test_planted_density_and_exact_lengths(syn):
    for did, cl in syn.centerlines.groupby("dendrite_id"):
        row = syn.dendrites.set_index("dendrite_id").loc[did]
        assert row["length_um"] == pytest.approx(polyline_length(cl[["z_um", "y_um", "x_um"]]))
        n = (syn.spines["dendrite_id"] == did).sum()
        assert n == row["n_spines"]
        # one spine per 1/density um, up to rounding and a few that could not be placed
        assert abs(n - row["planted_density_per_um"] * row["length_um"]) <= 2
    dense = make_stack(shape_um=(12, 30, 30), spine_density=1.0, seed=11)
    assert dense.spines.shape[0] > 1.6 * syn.spines.shape[0]


def test_heads_are_bright_and_psf_is_anisotropic(syn):
    img = syn.stack.data.astype(float)
    vs = np.array(syn.stack.voxel_size)
    idx = np.round(syn.spines[["z_um", "y_um", "x_um"]].to_numpy() / vs).astype(int)
    idx = np.clip(idx, 0, np.array(img.shape) - 1)
    at_heads = img[tuple(idx.T)]
    assert np.median(at_heads) > 2 * np.median(img)
    # an isolated bright spot is several times wider in z than in x
    quiet = make_stack(shape_um=(16, 12, 12), n_dendrites=0, puncta_per_1000um3=5, haze=0,
                       background_photons=0, read_noise=0, peak_photons=5000, seed=5)
    q = quiet.stack.data.astype(float)
    z, y, x = np.unravel_index(np.argmax(q), q.shape)

    def fwhm(profile, step):
        return np.sum(profile >= profile.max() / 2) * step

    fz = fwhm(q[:, y, x], quiet.stack.voxel_size[0])
    fx = fwhm(q[z, y, :], quiet.stack.voxel_size[2])
    assert fz > 2.5 * fx


def test_a_soma_is_a_filled_ball_as_bright_as_the_dendrites():
    kw = dict(shape_um=(16, 40, 40), n_dendrites=1, branch_probability=0, haze=0,
              puncta_per_1000um3=0, seed=3)
    plain, syn = make_stack(**kw), make_stack(soma_radius_um=5, **kw)
    assert len(plain.somata) == 0 and len(syn.somata) == 1
    soma = syn.somata.iloc[0]
    centre = soma[["z_um", "y_um", "x_um"]].to_numpy(float)
    assert soma["radius_um"] == 5
    # away from the dendrite, inside the field; the tissue's truth is unchanged
    cl = syn.centerlines[["z_um", "y_um", "x_um"]].to_numpy()
    assert np.linalg.norm(cl - centre, axis=1).min() > 8
    assert syn.spines.equals(plain.spines) and syn.dendrites.equals(plain.dendrites)
    vs = np.array(syn.stack.voxel_size)
    img = syn.stack.data.astype(float)
    z, y, x = np.round(centre / vs).astype(int)
    # filled at the dendrites' dye concentration: its middle, much wider than the blur, holds
    # the full concentration, which a shaft of 0.5 um radius (peak 40 photons, 16 grey levels
    # each) shows only through the blur's Gaussian (z, y sigmas 0.8, 0.2 um; its own 0.25 um)
    s2z, s2y = 0.8**2 + 0.25**2, 0.2**2 + 0.25**2
    full = 40 * 2 * np.sqrt(s2z * s2y) / 0.5**2 * np.exp(-centre[0] / 100) + 2  # photons
    middle = img[z, y - 3:y + 4, x - 3:x + 4] / 16
    assert middle.mean() == pytest.approx(full, rel=0.05)
    assert img[z, y, x + int(7 / vs[2])] < 0.2 * img[z, y, x]  # beyond its edge: background


def test_noise_levels(syn):
    noisy = make_stack(shape_um=(12, 30, 30), peak_photons=10, seed=11).stack.data.astype(float)
    clean = make_stack(shape_um=(12, 30, 30), peak_photons=200, seed=11).stack.data.astype(float)
    snr = [np.percentile(a, 99.9) / a.std() for a in (noisy, clean)]
    assert snr[1] > snr[0]


def test_written_files_round_trip(tmp_path, syn):
    paths = write_synthetic(syn, tmp_path / "syn.tif")
    s = read_stack(paths["stack"])
    assert s.voxel_size == pytest.approx(syn.stack.voxel_size)
    np.testing.assert_array_equal(s.data, syn.stack.data)
    back = read_spines(paths["spines"])
    np.testing.assert_allclose(back["x_um"], syn.spines["x_um"])
    assert paths["centerlines"].exists() and paths["dendrites"].exists()


def test_dendrite_brightness_scales_each_dendrite_alone():
    """The same geometry and noise draws; the second dendrite's shaft ten times brighter,
    the first's as before."""
    kw = dict(shape_um=(12, 30, 30), n_dendrites=2, branch_probability=0, dtype="float32",
              background_photons=0, read_noise=0, haze=0, puncta_per_1000um3=0, seed=3)
    plain, bright = make_stack(**kw), make_stack(dendrite_brightness=(1, 10), **kw)
    assert plain.spines.equals(bright.spines)
    vs = np.asarray(plain.stack.voxel_size)
    for did, factor in ((0, 1), (1, 10)):
        line = plain.centerlines[plain.centerlines["dendrite_id"] == did]
        idx = np.round(line[["z_um", "y_um", "x_um"]].to_numpy() / vs).astype(int)
        ratio = bright.stack.data[tuple(idx.T)].sum() / plain.stack.data[tuple(idx.T)].sum()
        assert ratio == pytest.approx(factor, rel=0.1)
    with pytest.raises(ValueError, match="one value per dendrite"):
        make_stack(dendrite_brightness=(1, 10, 3), **kw)
