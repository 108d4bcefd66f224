"""The layout written in README.md ("Layout"), kept: import contracts, one vocabulary, small
modules. These read the source tree only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "web", "workers", "cli")
# A module this long holds more than one concern: split it (README, "Layout").
MAX_LINES = 450


def _modules() -> list[Path]:
    return sorted(
        p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "migrations" not in p.relative_to(ROOT).parts
    )


def test_import_contracts_hold() -> None:
    """`lint-imports` with the contracts in pyproject.toml: the core imports neither `web`,
    `workers` nor `cli`; `web` and `workers` do not import each other; no import cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_import_contracts_catch_an_upward_import(tmp_path: Path) -> None:
    """The same contracts on a copy of the tree with one upward import added must fail, so the
    test above cannot pass by checking nothing."""
    import shutil

    for name in (*PACKAGES, "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, tmp_path / name)
    vocab = tmp_path / "appliance" / "vocab.py"
    vocab.write_text(vocab.read_text() + "\nimport web  # an upward import\n")
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "appliance.vocab -> web" in done.stdout


STATE_WORDS = {
    "queued", "running", "succeeded", "failed", "cancelled", "blocked", "interactive", "bulk"
}  # fmt: skip
# Same spelling, other meaning: the drop folder's `failed/` subfolder name.
NOT_A_STATE = {("appliance/settings.py", "failed_dir"), ("appliance/settings.py", "blocked_dir")}


def _state_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    rel = path.relative_to(ROOT).as_posix()
    allowed = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and (rel, node.target.id) in NOT_A_STATE
    }
    return [
        f"{rel}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and node.value in STATE_WORDS
        and id(node) not in docstrings | allowed
    ]


def test_job_state_words_are_literals_in_one_module() -> None:
    vocab = ROOT / "appliance" / "vocab.py"
    assert _state_literals(vocab), "the vocabulary module defines the words"
    found = [hit for p in _modules() if p != vocab for hit in _state_literals(p)]
    assert found == [], "import these from appliance.vocab:\n" + "\n".join(found)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_is_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_readme_layout_names_every_core_package() -> None:
    """README's "Layout" table names each sub-package of the core, so a newcomer finds the room."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    core = ROOT / "appliance"
    packages = [p.name for p in core.iterdir() if (p / "__init__.py").is_file()]
    assert packages
    missing = [name for name in packages if f"`appliance/{name}/`" not in layout]
    assert missing == [], f"README's Layout does not name: {missing}"
