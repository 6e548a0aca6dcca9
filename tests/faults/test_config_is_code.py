"""Item 9: a config is as trusted as code; nothing is imported before everything else validated."""

from __future__ import annotations

import json
import sys

import pytest

from dspy_icl_opt.pipeline import ConfigError, parse_config
from dspy_icl_opt.pipeline.cli import build_parser, main
from dspy_icl_opt.testing import make_words

SIDE_EFFECT = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def factory(**kwargs):
    raise RuntimeError("called")
'''


@pytest.fixture
def config(tmp_path, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": w, "answer": w[::-1]}) for w in make_words(20, seed=1)),
                    encoding="utf-8")
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_factory.py").write_text(SIDE_EFFECT.format(marker=str(marker)), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_factory", raising=False)
    return {"program": {"name": "evil_factory:factory"}, "metric": "exact_match", "output": str(tmp_path / "run"),
            "data": {"path": str(data), "train_size": 6, "val_size": 6, "test_size": 6},
            "optimize": [{"optimizer": "labeled", "params": {"k": 2}}]}, marker


@pytest.mark.parametrize("breakage", [
    {"seed": -1},  # the schema
    {"optimize": [{"optimizer": "abo", "params": {"beam_size": 0}}]},  # an optimizer's settings
    {"optimize": [{"optimizer": "no_such_optimizer"}]},
    {"metric": "not a spec"},
    {"lm": {"task": "not a model"}},
])
def test_a_rejected_config_imports_nothing(config, breakage):
    data, marker = config
    with pytest.raises(ConfigError):
        parse_config({**data, **breakage})
    assert not marker.exists()


def test_a_valid_config_imports_its_factory(config):
    data, marker = config
    parse_config(data)
    assert marker.exists()  # as documented: a config is code


@pytest.mark.parametrize("spec", ["os.system; rm -rf /", "os:system()", "../evil:x", "evil factory:x", ":x", "os:"])
def test_a_malformed_import_path_is_refused_before_any_import(config, spec):
    data, _ = config
    with pytest.raises(ConfigError, match=r"program.name: must be .*expected the form package.module:name"):
        parse_config({**data, "program": {"name": spec}})


def test_os_system_is_refused_and_never_run(config, tmp_path):
    data, _ = config
    target = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=r"program.name: .* 'os:system' is a builtin"):
        parse_config({**data, "program": {"name": "os:system", "args": {"command": f"touch {target}"}}})
    assert not target.exists()


def test_help_and_readme_say_a_config_is_code(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "as trusted as code" in capsys.readouterr().out
    assert "as trusted as code" in build_parser().format_help()
    from pathlib import Path

    assert "as trusted as code" in (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
