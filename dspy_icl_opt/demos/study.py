"""The Optuna side of the demo search: the study, its sampler and pruner, baselines, summaries.

Storage: ``None`` keeps the study in memory; a URL string opens an RDB study (``sqlite:///file.db``
to resume it in a later ``compile``; ``postgresql://...`` so several processes share it), with
heartbeats so that a trial whose process died is marked failed and run again once
(``RetryFailedTrialCallback``); any ``optuna.storages.BaseStorage`` is used as given.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from dspy_icl_opt._log import logger
from dspy_icl_opt.demos.strategies import Space
from dspy_icl_opt.search import SearchContext, stable_int
from dspy_icl_opt.search.scorer import example_key

PrunerName = Literal["median", "successive_halving"]
#: Trials that finish before the median pruner starts judging (Optuna's default).
MEDIAN_STARTUP_TRIALS = 5
#: Seconds between heartbeats of a running trial in an RDB study; a trial silent for twice this is failed.
HEARTBEAT_INTERVAL_S = 60
#: A trial failed by a dead worker is put back in the queue this many times.
STALE_TRIAL_RETRIES = 1
#: SQLite waits this long for a lock held by another process before giving up.
SQLITE_TIMEOUT_S = 60
#: Opening a new database from several workers at once can fail for all but one; retry this often ...
SCHEMA_RACE_RETRIES = 3
#: ... waiting this many seconds longer each time.
SCHEMA_RACE_WAIT_S = 0.5
POOLS_ATTR = "icl_pools"
#: The name of the study lock (:func:`study_lock`) held while the baselines are queued.
BASELINES_LOCK = "icl_baselines"
SETTINGS_ATTR = "icl_settings"


def make_sampler(sampler: optuna.samplers.BaseSampler | None, seed: int, shared: bool) -> optuna.samplers.BaseSampler:
    """The given sampler, or a seeded multivariate TPE sampler (grouped: the space is conditional).

    With a shared storage, each process gets its own seed (from the seed, host and pid) so that
    workers do not propose the same trials.
    """
    if sampler is not None:
        return sampler
    tpe_seed = stable_int(seed, "tpe", socket.gethostname(), os.getpid()) if shared else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, seed=tpe_seed)


def make_pruner(pruner: PrunerName | optuna.pruners.BasePruner | None) -> optuna.pruners.BasePruner:
    if pruner is None:
        return optuna.pruners.NopPruner()
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    if pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return pruner  # type: ignore[return-value]


#: Suffix of the lock file beside a SQLite study database (see `LockedSQLiteStorage`).
SQLITE_LOCK_SUFFIX = ".dspy-icl-opt.lock"


class LockedSQLiteStorage(optuna.storages.RDBStorage):
    """An RDB storage on SQLite whose trial-state changes hold a lock file beside the database.

    SQLite has no row locks, so two processes sharing a study can both read a queued trial as WAITING
    and both take it, or both finish the same trial: a trial is then run twice and one is lost. Optuna
    changes a trial's state by reading it and writing it in one session; holding an exclusive lock
    around that makes the read and the write one step across the processes of this machine (the only
    way SQLite can be shared). PostgreSQL locks the row itself and needs none of this.
    """

    def __init__(self, url: str, *args: Any, lock_path: str, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self.lock_path = lock_path

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Iterable[float] | None = None) -> bool:
        with _exclusive(self.lock_path):
            return super().set_trial_state_values(trial_id, state, values)


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (the race stays possible there)
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _sqlite_path(url: str) -> str | None:
    """The database file of a ``sqlite:///path`` URL (None for an in-memory database)."""
    path = url.split("///", 1)[1] if "///" in url else ""
    path = path.split("?", 1)[0]
    return path if path and path != ":memory:" else None


def make_storage(storage: str | optuna.storages.BaseStorage | None) -> optuna.storages.BaseStorage | None:
    """An RDB storage with heartbeats for a URL; other values as given.

    Workers started together may race to create the schema of a new database: the loser's error is
    retried (the schema is there by then).
    """
    if not isinstance(storage, str):
        return storage
    check_storage(storage)  # a named error at once for a bad URL, a missing folder, a server that is down
    storage = with_available_driver(storage)
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if storage.startswith("sqlite") else None
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                settings = {"engine_kwargs": engine_kwargs, "heartbeat_interval": HEARTBEAT_INTERVAL_S,
                            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                                max_retry=STALE_TRIAL_RETRIES)}
                path = _sqlite_path(storage) if storage.startswith("sqlite") else None
                if path is not None:
                    return LockedSQLiteStorage(storage, lock_path=path + SQLITE_LOCK_SUFFIX, **settings)
                return optuna.storages.RDBStorage(storage, **settings)
        except sqlalchemy.exc.ArgumentError as exc:
            raise StorageError(storage, f"not a database URL ({_first_line(exc)})", _URL_HINT) from None
        except ImportError as exc:
            raise StorageError(storage, f"its database driver is not installed ({exc})",
                               "Install it (PostgreSQL: pip install psycopg2-binary).") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if attempt == SCHEMA_RACE_RETRIES:
                raise StorageError(storage, _first_line(exc), _REACH_HINT) from None
            logger.debug("Opening the study storage failed ({}); retrying", exc)
            time.sleep(SCHEMA_RACE_WAIT_S * (attempt + 1))
    return None  # unreachable: the last attempt returns or raises


_URL_HINT = "Pass e.g. sqlite:///demos.db or postgresql://user:password@host/db, or None for an in-memory study."
_REACH_HINT = ("Check the URL, that a SQLite file's folder exists and is writable, and that the database server "
               "runs and accepts the user.")
#: Seconds a storage check waits for a database server.
CONNECT_TIMEOUT_S = 5


class StorageError(ValueError):
    """A study storage URL that cannot be opened; the message names it (without its password) and the fix."""

    def __init__(self, url: Any, reason: str, hint: str) -> None:
        super().__init__(f"`storage` {redact(url)!r} cannot be opened: {reason}. {hint}")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # the driver's own message, without SQLAlchemy's SQL and doc link
    text = str(orig if orig is not None else exc).strip().splitlines()
    return redact_text(text[0] if text else type(exc).__name__)


def redact_text(text: str) -> str:
    """Any ``user:password@`` inside a message, with the password hidden."""
    return re.sub(r"(//[^:/@\s]+):[^@/\s]*@", r"\1:***@", text)


def check_storage(url: str) -> None:
    """Open a storage URL once, quickly, without creating a study (no LM call); raise :class:`StorageError`.

    Checks the URL form, a SQLite file's folder, the driver and, for a server, that it accepts a connection.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(with_available_driver(url))
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise StorageError(url, f"not a database URL ({_first_line(exc)})", _URL_HINT) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = os.path.dirname(os.path.abspath(database))
            if not os.path.isdir(folder):
                raise StorageError(url, f"the folder {folder!r} of the SQLite file does not exist",
                                   "Create the folder first, or point the URL at an existing one.")
            if not os.access(folder, os.W_OK):
                raise StorageError(url, f"the folder {folder!r} of the SQLite file is not writable",
                                   "Fix its permissions, or point the URL at another folder.")
        return
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
    try:
        engine = sqlalchemy.create_engine(parsed, connect_args=connect_args)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise StorageError(url, f"unknown database kind ({_first_line(exc)})", _URL_HINT) from None
    except ImportError as exc:
        raise StorageError(url, f"its database driver is not installed ({exc})",
                           "Install it (PostgreSQL: pip install psycopg2-binary).") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(url, _first_line(exc), _REACH_HINT) from None
    finally:
        engine.dispose()


def with_available_driver(url: str) -> str:
    """``postgresql://...`` with the psycopg2 driver named when psycopg 3 is missing.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` URL as psycopg 3; ``psycopg2-binary`` is what
    most installs (and our test extra) carry.
    """
    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is None:
        return url
    return "postgresql+psycopg2://" + url[len("postgresql://"):]


def open_study(*, storage: str | optuna.storages.BaseStorage | None, study_name: str | None,
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study, or load it when ``study_name`` already exists in ``storage``."""
    return optuna.create_study(storage=make_storage(storage), study_name=study_name, sampler=sampler,
                               pruner=pruner, direction="maximize", load_if_exists=True)


def redact(url: Any) -> Any:
    """A storage URL without its password (for logs and reports)."""
    if not isinstance(url, str):
        return None if url is None else type(url).__name__
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def baseline_params(space: Space) -> list[dict[str, Any]]:
    """The trials run first: zero-shot (``k = 0`` everywhere), then the largest set of plain labeled
    demos (LabeledFewShot) and of bootstrapped ones (BootstrapFewShot), when those pools hold any."""
    zero = {f"{n}/k": 0 for n in space.pools}
    sets = [_largest_set(space, pool) for pool in ("labeled", "bootstrapped")]
    return [zero] + [params for params in sets if params != zero]


def _largest_set(space: Space, pool: str) -> dict[str, Any]:
    """Every predictor shows ``k_max`` demos of ``pool`` (fewer when the pool is smaller; none when empty)."""
    params: dict[str, Any] = {}
    for n in space.pools:
        k = min(space.k_max[n], len(space.pools[n].get(pool) or []))
        params[f"{n}/k"] = k
        if k == 0:
            continue
        params[f"{n}/pool"] = pool
        indexed = [s for s in ("random", "slots") if s in space.strategies]
        if indexed:
            params.update({f"{n}/strategy": indexed[0], f"{n}/set": 0})
        else:
            params[f"{n}/strategy"] = space.strategies[0]
        if k > 1:
            order = "as_selected" if "as_selected" in space.orders else space.orders[0]
            params.update({f"{n}/order": order, **({f"{n}/perm": 0} if order == "permutation" else {})})
    return params


def enqueue_baselines(study: optuna.Study, space: Space) -> None:
    """Queue the baselines unless the study already holds them (a resumed or shared study).

    Optuna's ``skip_if_exists`` reads the trials and then adds one: workers starting together would each find
    none and queue their own, and run every baseline once per worker. The study's lock makes it one step."""
    with study_lock(study, BASELINES_LOCK):
        for params in baseline_params(space):
            study.enqueue_trial(params, user_attrs={"icl_baseline": True}, skip_if_exists=True)


def shared_pools(study: optuna.Study, build: Any) -> tuple[dict[str, Any], bool]:
    """The pools stored in the study, or ``build()`` stored there first; and whether they were built here.

    Trials store indices into the pools, so every process of a study must search the same ones. Workers
    that start together would each build pools of their own (a bootstrap's traces differ from run to run)
    and the last to store them would win, leaving the others' trials pointing into pools nobody stored.
    The build therefore runs under a lock of the study (:func:`study_lock`): the first worker builds and
    stores, the others wait for it and read the stored pools, which also spares them the bootstrap calls.
    """
    stored = study.user_attrs.get(POOLS_ATTR)
    if stored is not None:
        return stored, False
    with study_lock(study, POOLS_ATTR):
        stored = study.user_attrs.get(POOLS_ATTR)  # stored by the worker that held the lock before us
        if stored is not None:
            return stored, False
        pools = build()
        study.set_user_attr(POOLS_ATTR, pools)
    return study.user_attrs.get(POOLS_ATTR, pools), True


#: Suffix of the file a SQLite study's named lock is held on (beside the database and its trial-state lock).
SQLITE_STUDY_LOCK_SUFFIX = ".dspy-icl-opt.{name}.lock"


@contextlib.contextmanager
def study_lock(study: optuna.Study, name: str) -> Iterator[None]:
    """Hold a lock named ``name`` of ``study`` across the processes that share it.

    SQLite (one machine): an exclusive lock on a file beside the database. PostgreSQL: a session advisory
    lock keyed by the study and the name, on a connection of its own. Both are released when the process
    dies. Other storages (in memory: one process) take no lock; for a storage shared some other way the
    race stays possible, which a warning says once per study.
    """
    backend = study._storage
    if isinstance(getattr(backend, "_backend", None), optuna.storages.RDBStorage):  # Optuna's cache around an RDB
        backend = backend._backend
    dialect = backend.engine.dialect.name if isinstance(backend, optuna.storages.RDBStorage) else None
    database = backend.engine.url.database if dialect == "sqlite" else None
    if database and database != ":memory:":
        with _exclusive(database + SQLITE_STUDY_LOCK_SUFFIX.format(name=name)):
            yield
        return
    if dialect == "postgresql":
        key = stable_int(study.study_name, name) - 2**31  # a bigint key; the same in every process
        with backend.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        return
    unlockable = (study.study_name, type(backend).__name__)
    if (not isinstance(backend, optuna.storages.InMemoryStorage) and dialect != "sqlite"
            and unlockable not in _WARNED_UNLOCKABLE):
        _WARNED_UNLOCKABLE.add(unlockable)
        logger.warning("Study {!r} is stored in a {} that dspy-icl-opt cannot lock: workers that start it at the "
                       "same time may each build demo pools (only the last stored is searched by later workers) "
                       "and queue the baselines. Start one worker first, or use a sqlite:/// or postgresql:// "
                       "URL.", *unlockable)
    yield


#: (study, storage kind) pairs already warned about in this process: one warning per study, not one per lock.
_WARNED_UNLOCKABLE: set[tuple[str, str]] = set()


def check_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    """Store the search-space settings in a new study; refuse to extend a study searched with others.

    Optuna cannot mix trials whose categorical choices differ, so a resumed or shared study must be
    searched with the same predictors, strategies, orders, pools and ``max_demos``.
    """
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
    elif stored != settings:
        raise ValueError(f"Study {study.study_name!r} was searched with {stored}, but this DemoSelector has "
                         f"{settings}. Use the same settings to extend it, or another study_name.")


#: What a point of ``k_curve`` measures (the report prints it beside the curve).
K_CURVE_NOTE = ("Per k: 'mean' and 'best' are trial scores on the trial examples (the search's minibatches), over "
                "the 'n' trials that completed; 'best' is the best of n on the examples that ranked them, so it is "
                "optimistic, more so for larger n. 'val' is the best score, on the final-choice examples, of the "
                "finalists with that k (those examples include the trials' own when half the valset was held back, so it "
                "is optimistic for the trial that ranked best there, less so than 'best'). "
                "'n_pruned' trials were stopped by the pruner, 'n_cut' by the budget (neither has a score here).")


def k_curve(trials: Iterable[FrozenTrial],
            validated: Mapping[int, float] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Trial scores per ``k``, per predictor (see :data:`K_CURVE_NOTE`); ``validated`` maps trial numbers
    to their final-choice score."""
    points: dict[str, dict[int, dict[str, Any]]] = {}
    for trial in trials:
        for name, k in (trial.user_attrs.get("icl_k") or {}).items():
            point = points.setdefault(name, {}).setdefault(int(k), {"scores": [], "n_pruned": 0, "n_cut": 0,
                                                                     "val": []})
            if trial.user_attrs.get("icl_stopped_by_budget"):
                point["n_cut"] += 1
            elif trial.state == TrialState.COMPLETE and trial.value is not None:
                point["scores"].append(float(trial.value))
            elif trial.state == TrialState.PRUNED:
                point["n_pruned"] += 1
            if validated and trial.number in validated:
                point["val"].append(float(validated[trial.number]))
    return {name: [_k_point(k, by_k[k]) for k in sorted(by_k)] for name, by_k in sorted(points.items())}


def _k_point(k: int, point: dict[str, Any]) -> dict[str, Any]:
    scores, val = point["scores"], point["val"]
    return {"k": k, "n": len(scores), "n_pruned": point["n_pruned"], "n_cut": point["n_cut"],
            "best": round(max(scores), 6) if scores else None,
            "mean": round(sum(scores) / len(scores), 6) if scores else None,
            "val": round(max(val), 6) if val else None}


def summary(study: optuna.Study, storage: Any, ran: int) -> dict[str, Any]:
    """What the report says about the study."""
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return {"name": study.study_name, "storage": redact(storage) or "in-memory", "trials": len(trials),
            "trials_this_run": ran, "states": states,
            "best_trial": best.number if best else None, "best_value": best.value if best else None}


def finished(trials: Iterable[FrozenTrial]) -> list[Mapping[str, Any]]:
    """The user attributes of trials that scored something: complete, pruned, or cut by the budget after
    some examples (each scored example is a valid row for the influence fit)."""
    def scored(t: FrozenTrial) -> bool:
        cut = t.state == TrialState.FAIL and t.user_attrs.get("icl_stopped_by_budget")
        return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or bool(cut and t.user_attrs.get("icl_scores"))

    return [t.user_attrs for t in trials if scored(t)]


def check_optuna_object(name: str, value: Any, base: type, allowed: tuple[Any, ...]) -> None:
    """``value`` is None, one of ``allowed`` (values or types) or an instance of the Optuna ``base`` class."""
    ok = value is None or isinstance(value, base) or any(
        (isinstance(a, type) and isinstance(value, a)) or value == a for a in allowed)
    if not ok:
        options = ", ".join([*(repr(a) for a in allowed if not isinstance(a, type)),
                             *(a.__name__ for a in allowed if isinstance(a, type)), f"an optuna {base.__name__}"])
        raise ValueError(f"`{name}` must be None, {options}, but got {value!r}.")


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials, best first (pruned ones, by their last value, only when none completed)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        return sorted(complete, key=lambda t: (-t.value, t.number))
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    return sorted(pruned, key=lambda t: (-t.intermediate_values[max(t.intermediate_values)], t.number))


def default_study_name(ctx: SearchContext, seed: int, settings: dict[str, Any]) -> str:
    """A name that is the same for the same program, trainset, seed and search space (so a rerun resumes)."""
    parts = [ctx.initial_state.key(), seed, sorted(settings.items()), *(example_key(ex) for ex in ctx.trainset)]
    return f"demoselector-{stable_int(*parts):08x}"
