"""README install notes that must follow the project's requirements."""

from __future__ import annotations

import re
import tomllib

from tests.helpers import ROOT


def test_cpu_only_install_note_names_the_torch_requirement_the_wheels_must_meet():
    """The CPU-only wheels are kept by ``pip install -e`` only while they satisfy pyproject's torch requirement,
    which the note quotes: a changed requirement must change the note too."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [torch] = [d for d in dependencies if re.match(r"torch\W", d)]
    readme = (ROOT / "README.md").read_text()
    note = re.search(
        r"pip install torch torchvision --index-url https://download\.pytorch\.org/whl/cpu`.*?\n\n", readme, re.S
    )
    assert note and f"`{torch}`" in note.group()
