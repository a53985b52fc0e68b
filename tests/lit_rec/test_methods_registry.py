"""One method registry (`lit_rec.reproduce.methods.METHODS`) feeds reproduce, the CLI test harness and the docs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from lit_rec.reproduce.methods import METHODS, ROOT, config_names

README = (ROOT / "README.md").read_text()


def paragraph(text: str, start: str) -> str:
    """The paragraph of `text` that begins with `start`."""
    begin = text.index(start)
    end = text.find("\n\n", begin)
    return text[begin: end if end >= 0 else None]


def test_every_shipped_method_config_is_registered() -> None:
    shipped = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(config_names()) == shipped
    assert config_names() == list(dict.fromkeys(Path(m.config).stem for m in METHODS))  # registry order, once each


def test_the_cli_harness_fits_every_registered_config() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import cli_harness
    finally:
        sys.path.remove(str(ROOT / "tests"))
    assert list(cli_harness.METHODS) == config_names()
    assert set(cli_harness.SHRINK) <= set(config_names())


def test_the_readme_lists_the_registry() -> None:
    """README's method configs ("Methods (`configs/<method>.yaml`): ...") and the rows "It trains ..." of the
    reproduction, in registry order."""
    methods = paragraph(README, "Methods (`configs/<method>.yaml`):").split("Each method file")[0]
    listed = re.findall(r"`([a-z0-9_]+)`", methods)
    assert sorted(listed) == sorted(config_names())
    trains = paragraph(README, "It trains ")
    positions = [trains.find(m.name if m.role == "table" else m.name.replace("DRL-Rec ", ""))
                 for m in METHODS]
    assert -1 not in positions and positions == sorted(positions), list(zip([m.name for m in METHODS], positions))
