"""The bundled programs install as ``dspy_icl_opt.programs``: a user's own ``programs`` package neither shadows
them nor is shadowed by them (issue 16, item 4)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_installs_every_subpackage_and_no_top_level_programs():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dspy_icl_opt").rglob("__init__.py")}
    assert set(setup["packages"]) == on_disk | {"dspy_icl_opt.programs"}
    assert all(name.split(".")[0] == "dspy_icl_opt" for name in setup["packages"])
    assert setup["package-dir"] == {"dspy_icl_opt.programs": "programs"}
    assert setup["package-data"]["dspy_icl_opt.programs"] == ["data/*.jsonl", "data/*.md"]


def test_a_users_own_programs_package_and_ours_live_side_by_side(tmp_path):
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "__init__.py").write_text("MINE = True\n", encoding="utf-8")
    code = ("import programs, dspy_icl_opt.programs as ours\n"
            "from dspy_icl_opt.programs import task_names\n"
            "assert programs.MINE and not hasattr(programs, 'task_names'), programs.__file__\n"
            "print(ours.__file__); print(len(task_names()))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stderr}\n(is this checkout installed? pip install -e .)"
    ours, count = done.stdout.split()
    assert Path(ours).resolve() == ROOT / "programs" / "__init__.py" and int(count) == 9
    listed = subprocess.run([sys.executable, "-m", "dspy_icl_opt.pipeline.cli", "list"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "hyperbaton" in listed.stdout, listed.stderr
