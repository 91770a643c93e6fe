"""The lint configuration bites: a planted wrong call or a broken layer makes `make lint` fail.

Each test copies the sources into a temporary directory, plants one defect and runs the same tool `make lint`
runs (mypy, lint-imports) with the workspace's configuration, so the checked-in tree is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())
MEMBERS = sorted(
    path.parent for pattern in ("libs/*/pyproject.toml", "services/*/pyproject.toml") for path in ROOT.glob(pattern)
)
TOOLS = Path(sys.executable).parent


def _copy_sources(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache", "*.pyc", "tests", "bench")
    for member in MEMBERS:
        relative = member.relative_to(ROOT)
        shutil.copytree(member / "src", destination / relative / "src", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def _plant(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports over ``tree`` alone: the installed (editable) source directories leave the path."""
    sources = [str(tree / member.relative_to(ROOT) / "src") for member in MEMBERS]
    installed = tuple(str(ROOT / part) for part in ("libs", "services"))
    program = (
        "import sys\n"
        f"sys.path = {sources!r} + [p for p in sys.path if not p.startswith({installed!r})]\n"
        "from importlinter.cli import lint_imports_command\n"
        "lint_imports_command(['--no-cache'])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", program], cwd=tree, capture_output=True, text=True, timeout=240, check=False
    )


def _run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOOLS / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False)


def test_every_member_is_on_the_mypy_path_and_ships_py_typed() -> None:
    mypy_path = set(CONFIG["tool"]["mypy"]["mypy_path"])
    for member in MEMBERS:
        src = member / "src"
        assert str(src.relative_to(ROOT)) in mypy_path, f"{src} is missing from [tool.mypy] mypy_path"
        for package in (src / "stella").iterdir():
            if package.is_dir() and (package / "__init__.py").exists():
                assert (package / "py.typed").exists(), f"{package} has no py.typed marker"


def test_a_wrong_call_into_our_own_code_fails_mypy(tmp_path: Path) -> None:
    tree = _copy_sources(tmp_path)
    handlers = tree / "services/promotion/src/stella/promotion/handlers/gating.py"
    _plant(
        handlers,
        (
            "\n\ndef _planted() -> None:\n"
            "    from stella.promotion.domain.encoding import sha256_digest\n\n"
            "    sha256_digest(1, 2, 3)\n"
            "    x: int = DecisionRecord\n"
        ),
    )
    domain = tree / "services/workflow/src/stella/workflow/domain/scheduler.py"
    _plant(domain, "\n\ndef _untyped(value):\n    return value\n")

    result = _run("mypy", "--no-incremental", str(handlers), str(domain), cwd=tree)

    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Too many arguments for "sha256_digest"  [call-arg]' in result.stdout
    assert 'variable has type "int")  [assignment]' in result.stdout
    # Domain modules are checked strictly: an unannotated function is an error there.
    assert "workflow/domain/scheduler.py" in result.stdout and "[no-untyped-def]" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("services/promotion/src/stella/promotion/repo.py", "from stella.release import domain", "No service imports"),
        ("services/workflow/src/stella/workflow/domain/run.py", "import asyncpg", "Pure modules"),
        ("services/promotion/src/stella/promotion/gates.py", "from stella.promotion import repo", "Pure modules"),
        ("libs/kit/src/stella/kit/errors.py", "import stella.testing", "The kit imports only"),
        ("libs/contracts/src/stella/contracts/envelope.py", "import stella.kit.errors", "Contracts import nothing"),
        ("libs/cel/src/stella/cel/__init__.py", "import stella.contracts", "The expression library"),
    ],
)
def test_a_broken_layer_fails_lint_imports(tmp_path: Path, module: str, planted: str, broken: str) -> None:
    tree = _copy_sources(tmp_path)
    _plant(tree / module, f"\n{planted}  # noqa\n")

    result = _lint_imports(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout.replace("\n", " ")


def test_the_unplanted_tree_passes_lint_imports(tmp_path: Path) -> None:
    result = _lint_imports(_copy_sources(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
