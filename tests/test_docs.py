"""The README documents every output column and every detection parameter."""

from pathlib import Path

from spinecount.params import DetectionParams
from spinecount.tables import DENDRITE_COLUMNS, SPINE_COLUMNS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_column_is_documented():
    for col in [*SPINE_COLUMNS, *DENDRITE_COLUMNS]:
        assert f"`{col}`" in README, col


def test_every_parameter_is_documented_with_its_default():
    for name, (default, _) in DetectionParams.describe().items():
        assert f"| `{name}` | {default:g} |" in README, name
