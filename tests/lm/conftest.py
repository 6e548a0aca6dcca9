"""Shared fixtures for the `dspy_icl_opt.lm` tests: fake part files and a fake llama."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

PART_SIZES = (1000, 2500, 17)
CHAT_ANSWER = "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"


class FakeLlama:
    """Stands in for `llama_cpp.Llama`: records calls and tracks concurrent entries."""

    def __init__(
        self,
        *,
        text: str | None = CHAT_ANSWER,
        finish_reason: str | None = "stop",
        usage: tuple[int, int] = (11, 7),
        delay: float = 0.0,
        error: Exception | None = None,
    ) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.usage = usage
        self.delay = delay
        self.error = error
        self.calls: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self._guard = threading.Lock()

    def create_chat_completion(self, **kwargs: Any) -> dict[str, Any]:
        with self._guard:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            if self.error is not None:
                raise self.error
            self.calls.append(kwargs)
            text = self.text if self.text is not None else f"seed={kwargs.get('seed')}"
            prompt, completion = self.usage
            return {
                "id": f"chatcmpl-{len(self.calls)}",
                "model": "fake.gguf",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": self.finish_reason}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
            }
        finally:
            with self._guard:
                self.active -= 1


@pytest.fixture
def fake_llama_factory():
    """Build `FakeLlama` objects: ``fake_llama_factory(text=None)`` echoes the seed."""
    return FakeLlama


@pytest.fixture
def fake_parts(tmp_path: Path) -> tuple[list[Path], bytes, str]:
    """Three small chunk files, their concatenation, and its SHA-256."""
    directory = tmp_path / "parts"
    directory.mkdir()
    parts, blob = [], b""
    for index, size in enumerate(PART_SIZES, start=1):
        data = bytes((index * 7 + i) % 256 for i in range(size))
        path = directory / f"part{index:02d}.bin"
        path.write_bytes(data)
        parts.append(path)
        blob += data
    return parts, blob, hashlib.sha256(blob).hexdigest()


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    """A tiny file with a GGUF header (never loaded by llama.cpp in non-embedded tests)."""
    path = tmp_path / "tiny-model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path
