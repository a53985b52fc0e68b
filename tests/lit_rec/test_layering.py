"""lit_rec is the library: nothing in it imports the top-level `callbacks` package (callbacks import lit_rec)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

LIT_REC = Path(__file__).resolve().parents[2] / "lit_rec"
CLASS_PATH = re.compile(r"callbacks(\.\w+)+")  # a config's class_path into the package


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an import statement names (top level, in functions, under `if`), with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def callbacks_references(path: Path) -> list[str]:
    """`file:line: module` for each import of `callbacks`, `importlib.import_module("callbacks...")` and class_path
    string naming a class in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [f"{path}:{line}: import {name}" for line, name in imported_modules(tree)
             if name == "callbacks" or name.startswith("callbacks.")]
    found += [f"{path}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and isinstance(node.value, str) and CLASS_PATH.fullmatch(node.value)]
    return found


def test_no_module_under_lit_rec_imports_callbacks() -> None:
    files = sorted(LIT_REC.rglob("*.py"))
    assert len(files) > 20 and LIT_REC / "reproduce" / "fit.py" in files
    assert [ref for path in files for ref in callbacks_references(path)] == []


def test_the_scan_finds_imports_in_functions_and_class_paths(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from callbacks.wandb_utils import find_wandb_logger\n    import callbacks\n"
                      "    return {'class_path': 'callbacks.early_stopping.WarmupEarlyStopping'}\n"
                      "x = 'text that mentions callbacks.TargetNetworkUpdate in a sentence'\n")
    assert [ref.split(": ", 1)[1] for ref in callbacks_references(module)] == [
        "import callbacks.wandb_utils", "import callbacks", "'callbacks.early_stopping.WarmupEarlyStopping'"]


def test_the_old_curve_recorder_class_path_still_loads() -> None:
    """Run configs of earlier reproductions name `callbacks.curve_recorder.CurveRecorder`."""
    from callbacks.curve_recorder import CurveRecorder as Old
    from lit_rec.reproduce.curves import CurveRecorder

    assert Old is CurveRecorder
