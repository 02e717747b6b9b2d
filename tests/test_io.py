"""Reading stacks in every supported format, and refusing bad input with one clear line."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from spinecount.errors import InputError
from spinecount.io import Stack, read_stack, write_imagej

SAMPLES = Path(__file__).resolve().parents[1] / "sample_stacks"


def _vol(shape=(4, 16, 20), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 200 + 1).astype(dtype)


@pytest.mark.parametrize("unit,scale", [("um", 1.0), ("micron", 1.0), ("\\u00B5m", 1.0),
                                        ("nm", 1e-3)])
def test_imagej_zyx_units(tmp_path, unit, scale):
    data = _vol(dtype=np.uint8)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / (0.12 / scale), 1 / (0.1 / scale)),
                     metadata={"spacing": 1.5 / scale, "unit": unit, "axes": "ZYX"})
    s = read_stack(path)
    assert s.data.shape == data.shape and s.data.dtype == np.uint8
    np.testing.assert_allclose(s.voxel_size, (1.5, 0.1, 0.12), rtol=1e-6)
    np.testing.assert_array_equal(s.data, data)
    assert s.metadata["format"] == "imagej" and s.path == str(path)


def test_imagej_hyperstack_zcyx_channel(tmp_path):
    data = _vol((5, 2, 8, 9))
    path = tmp_path / "h.tif"
    write_imagej(path, data, (0.5, 0.2, 0.2), axes="ZCYX")
    s = read_stack(path, channel=1)
    np.testing.assert_array_equal(s.data, data[:, 1])
    assert s.channel == 1 and s.voxel_size == (0.5, 0.2, 0.2)
    with pytest.raises(InputError, match="2 channels.*--channel"):
        read_stack(path)
    with pytest.raises(InputError, match="channel 2 does not exist"):
        read_stack(path, channel=2)


def test_imagej_tzcyx(tmp_path):
    data = _vol((2, 3, 2, 8, 9))
    path = tmp_path / "t.tif"
    write_imagej(path, data, (1.0, 0.1, 0.1), axes="TZCYX")
    with pytest.raises(InputError, match="2 time points"):
        read_stack(path, channel=0)
    s = read_stack(path, channel=0, timepoint=1)
    np.testing.assert_array_equal(s.data, data[1, :, 0])
    one = tmp_path / "t1.tif"
    write_imagej(one, data[:1], (1.0, 0.1, 0.1), axes="TZCYX")
    assert read_stack(one, channel=1).data.shape == (3, 8, 9)


def test_ome_tiff_physical_size_units(tmp_path):
    data = _vol((3, 2, 10, 12))
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "ZCYX", "PhysicalSizeX": 150.0, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.15, "PhysicalSizeYUnit": "µm",
        "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "µm"})
    s = read_stack(path, channel=0)
    np.testing.assert_allclose(s.voxel_size, (2.0, 0.15, 0.15))
    np.testing.assert_array_equal(s.data, data[:, 0])
    assert s.metadata["format"] == "ome"


def test_scanimage_interleaved_channels_and_frames_averaged(tmp_path):
    # 3 slices x 2 frames per slice x 2 channels, interleaved as ScanImage saves them.
    rng = np.random.default_rng(1)
    vol = (rng.random((3, 2, 2, 8, 10)) * 1000).astype(np.int16) + 1
    pages = vol.reshape(-1, 8, 10)
    software = ("SI.LINE_FORMAT_VERSION = 1\nSI.hChannels.channelSave = [1;2]\n"
                "SI.hStackManager.framesPerSlice = 2\nSI.hScan2D.logAverageFactor = 1\n"
                "SI.hStackManager.numSlices = 3\nSI.hStackManager.stackZStepSize = 0.8\n")
    path = tmp_path / "si.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for pg in pages:
            tw.write(pg, software=software, description="frameNumbers = 1\n",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER",
                     metadata=None, contiguous=False)
    s = read_stack(path, channel=1)
    assert s.metadata["format"] == "scanimage"
    np.testing.assert_allclose(s.data, vol[:, :, 1].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(s.voxel_size, (0.8, 0.25, 0.25))


def test_scanimage_pixel_size_from_scan_field():
    from spinecount.io import scanimage_pixel_size

    frame = {"SI.objectiveResolution": 15.0}
    rois = {"imagingRoiGroup": {"rois": {"scanfields": {"sizeXY": [10.24, 10.24],
                                                        "pixelResolutionXY": [512, 512]}}}}
    assert scanimage_pixel_size(frame, rois) == pytest.approx(0.3)
    assert scanimage_pixel_size({}, {}) is None


def test_plain_multipage_needs_voxel_size(tmp_path):
    data = _vol()
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None)
    with pytest.raises(InputError, match=r"plain.tif: voxel size \(z, y, x\) is not in the "
                                         r"file's metadata; give it with --voxel-size"):
        read_stack(path)
    s = read_stack(path, voxel_size=(2, 0.3, 0.3))
    assert s.voxel_size == (2.0, 0.3, 0.3) and s.metadata["voxel_size_source"] == "given"
    np.testing.assert_array_equal(s.data, data)


def test_default_72_dpi_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, _vol(), photometric="minisblack", resolution=(72, 72),
                     resolutionunit="INCH", metadata=None)
    with pytest.raises(InputError, match="voxel size"):
        read_stack(path)


def test_single_2d_image_is_one_slice(tmp_path):
    img = _vol((30, 40), dtype=np.float32)
    path = tmp_path / "mip.tif"
    tifffile.imwrite(path, img, resolution=(1e4 / 0.2, 1e4 / 0.2), resolutionunit="CENTIMETER")
    s = read_stack(path)
    assert s.data.shape == (1, 30, 40) and s.data.dtype == np.float32
    assert s.voxel_size[1:] == pytest.approx((0.2, 0.2))


def test_explicit_voxel_size_wins(tmp_path):
    path = tmp_path / "a.tif"
    write_imagej(path, _vol(), (1.0, 0.12, 0.12))
    assert read_stack(path, voxel_size=(0.5, 0.1, 0.1)).voxel_size == (0.5, 0.1, 0.1)


def test_bundled_real_crop():
    s = read_stack(SAMPLES / "rr30a_s0_crop.tif")
    assert s.data.shape == (20, 160, 694) and s.data.dtype == np.uint8
    assert s.voxel_size == pytest.approx((1.0, 0.12, 0.12))


# ---- bad input: one line, naming the file and the problem -------------------------------------

def _one_line(exc_info, name):
    msg = str(exc_info.value)
    assert "\n" not in msg and name in msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        read_stack(tmp_path / "nope.tif")
    assert "file not found" in _one_line(e, "nope.tif")


def test_not_a_tiff(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("hello")
    with pytest.raises(InputError) as e:
        read_stack(path)
    assert "not a readable TIFF" in _one_line(e, "notes.tif")


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    write_imagej(path, _vol((6, 64, 64)), (1, 0.1, 0.1))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as e:
        read_stack(path)
    assert "corrupt" in _one_line(e, "cut.tif")


def test_corrupt_compressed_data(tmp_path):
    path = tmp_path / "bad.tif"
    write_imagej(path, _vol((2, 64, 64)), (1, 0.1, 0.1), compression="zlib")
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        off = tf.pages[0].dataoffsets[0]
    raw[off:off + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError) as e:
        read_stack(path)
    assert "corrupt" in _one_line(e, "bad.tif")


@pytest.mark.parametrize("value,expect", [(0, "all zero"), (7, "constant")])
def test_blank_stacks(tmp_path, value, expect):
    path = tmp_path / "blank.tif"
    write_imagej(path, np.full((3, 8, 8), value, np.uint8), (1, 0.1, 0.1))
    with pytest.raises(InputError) as e:
        read_stack(path)
    assert expect in _one_line(e, "blank.tif")


def test_nan_stack(tmp_path):
    data = _vol(dtype=np.float32)
    data[1, 2, 3] = np.nan
    path = tmp_path / "nan.tif"
    write_imagej(path, data, (1, 0.1, 0.1))
    with pytest.raises(InputError) as e:
        read_stack(path)
    assert "NaN" in _one_line(e, "nan.tif")


def test_too_many_dimensions(tmp_path):
    path = tmp_path / "5d.tif"
    tifffile.imwrite(path, _vol((2, 3, 4, 8, 8)), metadata={"axes": "QQZYX"})
    with pytest.raises(InputError) as e:
        read_stack(path, voxel_size=(1, 0.1, 0.1))
    assert "dimensions" in _one_line(e, "5d.tif")


@pytest.mark.parametrize("vs", [(0, 0.1, 0.1), (1, -0.1, 0.1), (1, float("nan"), 0.1)])
def test_non_positive_voxel_size(tmp_path, vs):
    path = tmp_path / "a.tif"
    write_imagej(path, _vol(), (1, 0.1, 0.1))
    with pytest.raises(InputError, match="positive"):
        read_stack(path, voxel_size=vs)


@pytest.mark.parametrize("vs", [(1000, 120, 120), (1, 0.12, 120), (0.001, 0.00012, 0.00012),
                                (50, 0.1, 0.1)])
def test_a_voxel_size_in_the_wrong_unit_is_refused(tmp_path, vs):
    """Nanometres or millimetres taken for micrometres give a clear error, not a detection at
    1000 times the scale."""
    path = tmp_path / "a.tif"
    write_imagej(path, _vol(), (1, 0.1, 0.1))
    with pytest.raises(InputError) as e:
        read_stack(path, voxel_size=vs)
    assert "nanometres or millimetres" in _one_line(e, "a.tif")
    assert read_stack(path, voxel_size=(20, 2, 0.005)).voxel_size == (20, 2, 0.005)
    with pytest.raises(InputError, match="nanometres or millimetres"):  # a stack made in code
        Stack(_vol(), vs)
