"""MLflow tracking for tunefleet drivers (and training rank 0).

Design rules:

* Only the driver (or the rank-0 training worker) talks to MLflow, always through an explicit
  :class:`mlflow.tracking.MlflowClient` and explicit run ids. The fluent API
  (``mlflow.start_run`` and friends) keeps process-global state, which breaks as soon as a
  driver runs several trainings or a Ray worker logs into a run created by the driver.
* A tracking outage must never kill training. Every MLflow call goes through
  :meth:`Tracker._call`; when it fails with a transient error the call is kept in an in-memory
  buffer (bounded, oldest dropped first), a single warning is emitted for the outage, and the
  buffer is replayed in order - before anything else - on the next successful call or on
  :meth:`Tracker.flush`. Metric order, step numbers and original timestamps are preserved.
* Permanent errors (MLflow rejected the request itself, e.g. an invalid key or a changed param
  value) are not buffered - replaying them would fail forever - they are warned about and
  dropped.

:meth:`Tracker.start` itself does contact the tracking server and raises if it cannot: it runs
before training starts, so failing loudly there (wrong URI, server not up) is the useful
behaviour.

MLflow is imported lazily so that importing :mod:`tunefleet.tracking` stays cheap.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefleet.paths import tunefleet_home

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

__all__ = [
    "MAX_PARAM_VAL_LENGTH",
    "MAX_TAG_VAL_LENGTH",
    "Tracker",
    "default_tracking_uri",
    "flatten_dict",
]

log = logging.getLogger(__name__)

# Limits of MLflow 3's request validation (``mlflow.utils.validation``, MLflow 3.17). Kept as
# constants here so that importing this module does not import mlflow; a unit test checks them
# against the installed MLflow.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
_MAX_ENTITY_KEY_LENGTH = 250
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_DATASET_DIGEST_SIZE = 36

# MLflow error codes that mean "the request itself is wrong": replaying cannot help.
_PERMANENT_ERROR_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "BAD_REQUEST",
        "MALFORMED_REQUEST",
    }
)

_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _tunefleet_home() -> Path:
    return Path(os.path.abspath(tunefleet_home()))


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///{TUNEFLEET_HOME}/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{_tunefleet_home()}/mlflow.db"


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys.

    Lists/tuples become their ``str()``, ``None`` becomes ``"null"``, an empty nested dict
    becomes ``"{}"``; other values are kept as is.
    """
    out: dict[str, Any] = {}
    for key, value in d.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            if value:
                out.update(flatten_dict(value, full))
            else:
                out[full] = "{}"
        elif isinstance(value, (list, tuple)):
            out[full] = str(value)
        elif value is None:
            out[full] = "null"
        else:
            out[full] = value
    return out


def _sanitize_key(key: str) -> str:
    """Make ``key`` acceptable to MLflow's key validation (chars and length)."""
    clean = _INVALID_KEY_CHARS.sub("_", str(key))[:_MAX_ENTITY_KEY_LENGTH]
    if clean != key:
        log.debug("MLflow key %r sanitized to %r", key, clean)
    return clean


def _truncate(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        log.debug("MLflow value truncated from %d to %d characters", len(text), limit)
        text = text[:limit]
    return text


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _is_http_uri(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _configure_http_env(uri: str) -> None:
    """Make MLflow's HTTP client fail fast for http(s) tracking URIs.

    By default MLflow retries a failing request 7 times with exponential backoff and a 120 s
    timeout per attempt, i.e. a single ``log_metrics`` call can block the training loop for
    several minutes while the server is down. We have our own buffering and replay, so we ask
    MLflow for 0 retries and a 5 s timeout - unless the user set these variables explicitly.
    MLflow reads them at request time, but we set them before creating the client anyway.
    """
    if not _is_http_uri(uri):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _prepare_store(uri: str) -> None:
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def _make_client(uri: str) -> MlflowClient:
    _configure_http_env(uri)
    _prepare_store(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _is_permanent(err: BaseException) -> bool:
    if isinstance(err, FileNotFoundError):
        return True
    try:
        from mlflow.exceptions import MlflowException
    except Exception:  # pragma: no cover
        return False
    return isinstance(err, MlflowException) and err.error_code in _PERMANENT_ERROR_CODES


def _is_param_conflict(err: BaseException) -> bool:
    return "Changing param values is not allowed" in str(err)


def _filter_value(value: str) -> str:
    """Quote a value for an MLflow search filter string."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search for a tag value containing both quote kinds: {value!r}")


def _fn_name(fn: str | Callable) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


# --------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------
class Tracker:
    """One MLflow run, logged through an explicit :class:`MlflowClient`, outage tolerant.

    Create it with :meth:`start` (driver: get/create experiment and run) or :meth:`attach`
    (a worker logging into an existing run).
    """

    #: at most this many calls are buffered during an outage; older ones are dropped.
    MAX_BUFFER = 100_000
    #: while an outage lasts, regular calls only retry the server this often (seconds); in
    #: between they are buffered directly, so a black-holed server costs at most one request
    #: timeout per interval instead of one per logging call. :meth:`flush` always retries.
    RETRY_INTERVAL_S = 10.0

    def __init__(self, client: MlflowClient, uri: str, run_id: str,
                 experiment_id: str | None = None) -> None:
        self._client = client
        self._uri = uri
        self._run_id = run_id
        self._experiment_id = experiment_id
        self._pending: collections.deque[tuple[str | Callable, tuple, dict]] = collections.deque()
        self._lock = threading.RLock()
        self._outage = False
        self._dropped_warned = False
        self._next_retry_at = 0.0
        self.max_buffer = self.MAX_BUFFER
        self.retry_interval_s = self.RETRY_INTERVAL_S

    # ---------------------------------------------------------------- construction
    @classmethod
    def start(cls, uri: str | None, experiment: str, run_name: str,
              tags: dict | None = None,
              resume_tag: tuple[str, str] | None = None) -> Tracker:
        """Get or create ``experiment`` and start (or resume) a run in it.

        With ``resume_tag=(key, value)``, an active run of the experiment carrying that tag is
        reused (its status is set back to RUNNING) so a resumed training continues the same
        MLflow run; otherwise a new run is created carrying that tag.
        """
        uri = uri or default_tracking_uri()
        client = _make_client(uri)
        exp_id = cls._get_or_create_experiment(client, uri, experiment)
        tags = {str(k): v for k, v in (tags or {}).items()}

        run_id = None
        if resume_tag is not None:
            key, value = str(resume_tag[0]), str(resume_tag[1])
            from mlflow.entities import ViewType

            runs = client.search_runs(
                experiment_ids=[exp_id],
                filter_string=f"tags.`{key}` = {_filter_value(value)}",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if runs:
                run_id = runs[0].info.run_id
                client.update_run(run_id, status="RUNNING")
                log.info("resuming MLflow run %s (%s=%s)", run_id, key, value)
            else:
                tags[key] = value

        if run_id is None:
            run = client.create_run(
                exp_id,
                tags={k: _truncate(v, MAX_TAG_VAL_LENGTH) for k, v in tags.items()},
                run_name=run_name,
            )
            run_id = run.info.run_id
            tracker = cls(client, uri, run_id, exp_id)
        else:
            tracker = cls(client, uri, run_id, exp_id)
            if tags:
                tracker.set_tags(tags)
        print(f"MLflow run id: {run_id} (tracking uri: {uri})", flush=True)
        return tracker

    @classmethod
    def attach(cls, uri: str | None, run_id: str) -> Tracker:
        """Log into an existing run (e.g. from the rank-0 training worker). No server call."""
        uri = uri or default_tracking_uri()
        return cls(_make_client(uri), uri, run_id)

    @staticmethod
    def _get_or_create_experiment(client: MlflowClient, uri: str, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        artifact_location = None
        if _sqlite_path(uri) is not None:
            artifacts = _tunefleet_home() / "mlartifacts"
            artifacts.mkdir(parents=True, exist_ok=True)
            artifact_location = artifacts.as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as err:  # created concurrently by another driver
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # ---------------------------------------------------------------- properties
    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    @property
    def client(self) -> MlflowClient:
        return self._client

    @property
    def pending(self) -> int:
        """Number of calls buffered while MLflow was unreachable."""
        return len(self._pending)

    # ---------------------------------------------------------------- buffering core
    def _invoke(self, fn: str | Callable, args: tuple, kwargs: dict) -> Any:
        # Method names are resolved on the client at call time (not when buffered), so a
        # replaced/recreated client attribute is honoured on replay.
        target = getattr(self._client, fn) if isinstance(fn, str) else fn
        return target(*args, **kwargs)

    def _note_outage(self, err: BaseException) -> None:
        self._next_retry_at = time.monotonic() + self.retry_interval_s
        if not self._outage:
            self._outage = True
            warnings.warn(
                f"MLflow unreachable ({err}); buffering, training continues", stacklevel=4
            )
        else:
            log.debug("MLflow still unreachable: %s", err)

    def _enqueue(self, fn: str | Callable, args: tuple, kwargs: dict) -> None:
        while len(self._pending) >= max(1, self.max_buffer):
            self._pending.popleft()
            if not self._dropped_warned:
                self._dropped_warned = True
                warnings.warn(
                    f"MLflow buffer full ({self.max_buffer} calls); dropping the oldest",
                    stacklevel=4,
                )
        self._pending.append((fn, args, kwargs))

    def _replay(self) -> bool:
        """Replay the buffer in order. True when it is empty afterwards."""
        replayed = 0
        while self._pending:
            fn, args, kwargs = self._pending[0]
            try:
                self._invoke(fn, args, kwargs)
            except Exception as err:  # noqa: BLE001 - any failure means "still down"
                if _is_permanent(err):
                    self._pending.popleft()
                    warnings.warn(
                        f"MLflow rejected buffered {_fn_name(fn)} call, dropped: {err}",
                        stacklevel=3,
                    )
                    continue
                self._note_outage(err)
                return False
            self._pending.popleft()
            replayed += 1
        if self._outage:
            log.warning("MLflow reachable again; replayed %d buffered call(s)", replayed)
        self._outage = False
        self._dropped_warned = False
        return True

    def _call(self, fn: str | Callable, *args: Any, **kwargs: Any) -> Any:
        """Run one MLflow call; buffer it on failure. Returns its result, or None if buffered.

        ``fn`` is a :class:`MlflowClient` method name (preferred) or a callable.
        """
        return self._dispatch(fn, args, kwargs)

    def _dispatch(self, fn: str | Callable, args: tuple, kwargs: dict, *,
                  buffer: bool = True, raise_permanent: bool = False) -> Any:
        with self._lock:
            if self._pending:
                if buffer and time.monotonic() < self._next_retry_at:
                    self._enqueue(fn, args, kwargs)  # still in back-off: don't hit the server
                    return None
                if not self._replay():
                    if buffer:
                        self._enqueue(fn, args, kwargs)
                    return None
            try:
                result = self._invoke(fn, args, kwargs)
            except Exception as err:  # noqa: BLE001 - tracking must never kill training
                if _is_permanent(err):
                    if raise_permanent:
                        raise
                    warnings.warn(f"MLflow rejected {_fn_name(fn)} call: {err}", stacklevel=4)
                    return None
                self._note_outage(err)
                if buffer:
                    self._enqueue(fn, args, kwargs)
                return None
            if self._outage:  # first success after an outage with nothing buffered
                self._outage = False
                self._dropped_warned = False
            return result

    # ---------------------------------------------------------------- logging API
    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (nested dicts flattened, values stringified and truncated to MLflow's
        limit), 100 per ``log_batch``. Re-logging an identical value is fine; a changed value
        is warned about and the original value kept."""
        from mlflow.entities import Param

        flat = flatten_dict(params)
        by_key: dict[str, Param] = {}
        for key, value in flat.items():
            k = _sanitize_key(key)
            by_key[k] = Param(k, _truncate(value, MAX_PARAM_VAL_LENGTH))
        for chunk in _chunks(list(by_key.values()), _MAX_PARAMS_TAGS_PER_BATCH):
            try:
                self._dispatch("log_batch", (self._run_id,),
                               {"params": chunk, "synchronous": True}, raise_permanent=True)
            except Exception as err:  # noqa: BLE001 - permanent error from MLflow
                if _is_param_conflict(err):
                    self._log_params_skipping_existing(chunk)
                else:
                    warnings.warn(f"MLflow rejected log_params: {err}", stacklevel=2)

    def _log_params_skipping_existing(self, chunk: list) -> None:
        run = self._dispatch("get_run", (self._run_id,), {}, buffer=False)
        if run is None:
            warnings.warn("MLflow param conflict and the run could not be read; params dropped",
                          stacklevel=3)
            return
        existing = run.data.params
        changed = sorted(p.key for p in chunk if p.key in existing and existing[p.key] != p.value)
        if changed:
            warnings.warn(
                f"MLflow params already logged with a different value, keeping the original: "
                f"{changed}",
                stacklevel=3,
            )
        new = [p for p in chunk if p.key not in existing]
        if new:
            self._call("log_batch", self._run_id, params=new, synchronous=True)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Log metrics at ``step`` (one timestamp for all: ``timestamp_ms``, default now, e.g.
        when rank 0 took them, for records relayed by the driver); non-finite values are skipped."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        step = int(step)
        out = []
        for key, value in metrics.items():
            try:
                val = float(value)
            except (TypeError, ValueError):
                log.debug("metric %s=%r is not a number; skipped", key, value)
                continue
            if not math.isfinite(val):
                log.debug("metric %s=%r is not finite; skipped (step %d)", key, val, step)
                continue
            out.append(Metric(_sanitize_key(key), val, ts, step))
        for chunk in _chunks(out, _MAX_METRICS_PER_BATCH):
            self._call("log_batch", self._run_id, metrics=chunk, synchronous=True)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        by_key = {
            _sanitize_key(k): RunTag(_sanitize_key(k), _truncate(v, MAX_TAG_VAL_LENGTH))
            for k, v in tags.items()
        }
        for chunk in _chunks(list(by_key.values()), _MAX_PARAMS_TAGS_PER_BATCH):
            self._call("log_batch", self._run_id, tags=chunk, synchronous=True)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's content (``log_artifacts``), under ``artifact_path``.

        When buffered during an outage, the file is read at replay time: keep it until then.
        """
        path = Path(local_path)
        if not path.exists():
            warnings.warn(f"MLflow artifact {path} does not exist; not logged", stacklevel=2)
            return
        if path.is_dir():
            self._call("log_artifacts", self._run_id, str(path), artifact_path)
        else:
            self._call("log_artifact", self._run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", self._run_id, str(text), artifact_file)

    def log_dict(self, d: dict, artifact_file: str) -> None:
        try:
            d = copy.deepcopy(d)  # a buffered call must not see later mutations
        except Exception:  # noqa: BLE001
            pass
        self._call("log_dict", self._run_id, d, artifact_file)

    def log_dataset(self, name: str, digest: str, num_rows: int, source: str, context: str | None = None,
                    tags: dict | None = None) -> None:
        """Record a dataset as tags and params ``dataset.<name>.{digest,rows,source}`` and as an
        MLflow dataset input (``MetaDataset`` + ``log_inputs``; its digest is cut to MLflow's
        36-character limit, the tags/params keep the full one). ``context``: the input's
        ``mlflow.data.context`` tag (default: ``name``; evals use ``"eval"``); ``tags``: more
        tags of the input (self-play lineage: which model generated it)."""
        info = {
            f"dataset.{name}.digest": str(digest),
            f"dataset.{name}.rows": str(int(num_rows)),
            f"dataset.{name}.source": str(source),
        }
        self.set_tags(info)
        self.log_params(info)
        try:
            dataset_input = _dataset_input(name, str(digest), int(num_rows), str(source), context, tags)
        except Exception as err:  # noqa: BLE001 - the tags/params above are the record
            log.debug("could not build an MLflow dataset input for %s: %s", name, err)
            return
        self._call("log_inputs", self._run_id, datasets=[dataset_input])

    # ---------------------------------------------------------------- reading / lifecycle
    def list_artifacts(self) -> list[str]:
        """All artifact file paths of the run (recursive, relative to the run's root)."""
        self.flush()
        files: list[str] = []
        todo: list[str | None] = [None]
        while todo:
            path = todo.pop()
            infos = self._dispatch("list_artifacts", (self._run_id, path), {}, buffer=False)
            for info in infos or []:
                if info.is_dir:
                    todo.append(info.path)
                else:
                    files.append(info.path)
        return sorted(files)

    def flush(self) -> bool:
        """Retry everything buffered now. True when the buffer is empty."""
        with self._lock:
            if not self._pending:
                return True
            return self._replay()

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run terminated with ``status``."""
        self.flush()
        self._call("set_terminated", self._run_id, status)
        if self._pending:
            warnings.warn(
                f"MLflow still unreachable at finish: {len(self._pending)} buffered call(s) "
                f"for run {self._run_id} were not delivered",
                stacklevel=2,
            )

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FAILED" if exc_type is not None else "FINISHED")

    def __repr__(self) -> str:
        return f"Tracker(uri={self._uri!r}, run_id={self._run_id!r}, pending={len(self._pending)})"


def _dataset_input(name: str, digest: str, num_rows: int, source: str, context: str | None = None,
                   tags: dict | None = None):
    """Build a ``DatasetInput`` for ``client.log_inputs`` from dataset metadata."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    ds_source = _dataset_source(source)

    class _RowsMetaDataset(MetaDataset):
        @property
        def profile(self):
            return {"num_rows": num_rows}

        def to_dict(self):
            config = super().to_dict()
            config["profile"] = json.dumps(self.profile)
            return config

    ds = _RowsMetaDataset(ds_source, name=name, digest=digest[:_MAX_DATASET_DIGEST_SIZE])
    extra = [InputTag(str(k), _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in (tags or {}).items()]
    return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context or name), *extra])


def _dataset_source(source: str):
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if _is_http_uri(source):
        return HTTPDatasetSource(source)
    if "://" in source or os.path.exists(source):
        # s3://, gs://, file paths, ...: let MLflow pick its own source type.
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return resolve_dataset_source(source)
        except Exception:  # noqa: BLE001
            pass
    # e.g. a Hugging Face hub id or a synthetic generator spec: keep the string verbatim.
    return CodeDatasetSource({"uri": source})
