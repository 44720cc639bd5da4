"""Reading dataset rows for instance building, through ``datasets`` in streaming mode.

Rows are read only after tasks exist, a few hundred per split, so streaming is
the right mode: nothing is downloaded or prepared beyond the rows consumed.
Every way a dataset can fail to give rows (missing, gated, script-based,
offline, broken files, unknown config) becomes one ``RowsUnavailable`` with a
short ``reason`` label that the engine counts; none reaches the user as a
traceback.

Rows are yielded as ``datasets`` gives them: ClassLabel columns keep their
integer ids (``-1`` marks an unlabelled row). ``RowsInfo.labels`` carries the
names per column so that ``dynogen.instances.render.build_instance`` maps ids to
names, and can tell an unlabelled row from a label called ``-1``.

Safety: ``trust_remote_code`` is never passed. ``datasets`` 5.x refuses
script-based datasets outright ("Dataset scripts are no longer supported",
raised before any code runs); that refusal is reported as ``script_only``.
``HF_HUB_OFFLINE`` is left to ``datasets`` to read, so offline mode holds.

>>> rows = open_rows("dynogen/data/samples/cafe_reviews", "default", rows_per_split=5)
>>> rows.info.labels["label"]
('negative', 'neutral', 'positive')
>>> for split, row in rows: ...
"""

from __future__ import annotations

import functools
import importlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynogen.errors import DynogenError
from dynogen.units import transient

__all__ = [
    "RowsInfo",
    "Rows",
    "UnitRows",
    "RowsReason",
    "RowsUnavailable",
    "iter_rows",
    "label_names",
    "open_rows",
]

# ``load_dataset``'s shape; injectable so tests can play a gated or offline Hub.
Loader = Callable[..., Any]


class RowsReason:
    """Counted reasons a unit yields no rows (labels used in report.json).

    The first group is final: the dataset is what it is, and a resume skips it
    (unless ``--retry-skipped`` names the reason). The second is transient
    (``dynogen.units.TRANSIENT_REASONS``): the server was busy or away, the
    retries ran out, and the unit is journaled ``retryable`` for the next resume.
    """

    NOT_FOUND = "not_found"
    GATED = "gated"
    SCRIPT_ONLY = "script_only"
    NO_DATA_FILES = "no_data_files"
    CONFIG_NOT_FOUND = "config_not_found"
    SPLIT_NOT_FOUND = "split_not_found"
    NO_TRAINING_SPLIT = "no_training_split"
    LOAD_ERROR = "load_error"  # a data file that cannot be parsed
    # transient
    OFFLINE = "offline"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection_error"


class RowsUnavailable(DynogenError):
    """No (more) rows can be read from a dataset; ``reason`` is a ``RowsReason`` label.

    ``retryable``: the reason is transient (a 429, a 5xx, a timeout, a reset, offline).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"rows unavailable ({reason}): {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def retryable(self) -> bool:
        return transient(self.reason)


@dataclass(frozen=True, slots=True)
class RowsInfo:
    """What is known about the rows before reading them.

    ``features`` is the ``datasets.Features`` of the streamed dataset, or
    ``None`` when the data files declare none (plain jsonl without a card).
    ``labels`` maps each ClassLabel or list-of-ClassLabel column to its names.
    ``splits`` are the splits that will be read, in order; ``missing_splits``
    were asked for but are not in the dataset.
    """

    features: Mapping[str, Any] | None
    labels: Mapping[str, tuple[str, ...]]
    splits: tuple[str, ...]
    missing_splits: tuple[str, ...] = ()
    columns: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class UnitRows:
    """A unit's rows read whole: ``(split, row)`` pairs in order, and what is known of them.

    ``via`` says how they were read (``datasets`` for a local folder; ``parquet`` or
    ``viewer`` for the Hub, see ``hub_rows``); ``dropped`` counts rows left out
    because the server cut one of their cells.
    """

    info: RowsInfo
    rows: tuple[tuple[str, dict[str, Any]], ...]
    via: str = "datasets"
    dropped: int = 0

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def label_names(features: Mapping[str, Any] | None) -> dict[str, tuple[str, ...]]:
    """ClassLabel names per top-level column, including lists of ClassLabel."""
    if not features:
        return {}
    from datasets import ClassLabel, LargeList, List

    out: dict[str, tuple[str, ...]] = {}
    for name, feat in features.items():
        inner = feat
        if isinstance(feat, (List, LargeList)):
            inner = feat.feature
        elif isinstance(feat, list) and len(feat) == 1:
            inner = feat[0]
        if isinstance(inner, ClassLabel) and inner.names:
            out[name] = tuple(str(n) for n in inner.names)
    return out


class Rows:
    """Rows of one dataset configuration, at most ``rows_per_split`` per split.

    Iterating yields ``(split, row)``. A file that breaks mid-way raises
    ``RowsUnavailable("load_error")`` at that point; rows yielded before it
    are valid.
    """

    __slots__ = ("_dataset", "_rows_per_split", "_errors", "info", "data_ref")

    def __init__(
        self,
        dataset: Mapping[str, Any],
        info: RowsInfo,
        rows_per_split: int,
        errors: tuple[type[BaseException], ...],
        data_ref: str,
    ) -> None:
        self._dataset = dataset
        self._rows_per_split = rows_per_split
        self._errors = errors
        self.info = info
        self.data_ref = data_ref

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for split in self.info.splits:
            it = iter(itertools.islice(self._dataset[split], self._rows_per_split))
            while True:
                try:
                    row = next(it)
                except StopIteration:
                    break
                except self._errors as e:
                    raise RowsUnavailable(
                        RowsReason.LOAD_ERROR,
                        f"{self.data_ref} [{split}]: {type(e).__name__}: {_short(e)}",
                    ) from None
                yield split, dict(row)


@functools.cache
def _give_tqdm_a_lock() -> None:
    """Give tqdm's base class its write lock before two threads read rows at once.

    Why: ``load_dataset`` reads files through ``tqdm.contrib.concurrent.thread_map``,
    whose ``ensure_lock`` creates a class lock when none exists and deletes it when it
    is done, even while another thread's bars still use it (``AttributeError: type
    object 'tqdm' has no attribute '_lock'``; huggingface/datasets#7660, tqdm#982).
    A batch run reads its plan and its source in two threads, and that race ended
    about one batch run in twelve, or could have skipped a unit silently. With a
    lock in place before any thread starts, ``ensure_lock`` never deletes one.
    """
    from tqdm import std

    std.tqdm.get_lock()


def open_rows(
    data_ref: str,
    config: str | None,
    *,
    splits: Sequence[str] | None = None,
    rows_per_split: int,
    load: Loader | None = None,
    cache_dir: str | None = None,
    allow: Callable[[str], bool] | None = None,
) -> Rows:
    """Open ``data_ref`` (a local folder or a Hub id) for streaming.

    ``splits`` gives the order to read them in (the unit's order); ``None``
    reads every split in the dataset's own order. ``allow`` (the split policy)
    leaves out splits it refuses; none left is ``no_training_split``.
    Raises ``RowsUnavailable``.
    """
    if rows_per_split < 0:
        raise ValueError("rows_per_split must be >= 0")
    errors = _load_errors()
    if load is None:
        import datasets

        _give_tqdm_a_lock()
        load = datasets.load_dataset
    name = config or None
    # Lock files `datasets` writes even when streaming go here, not in ~/.cache.
    extra = {"cache_dir": cache_dir} if cache_dir else {}
    try:
        try:
            ds = load(data_ref, name=name, streaming=True, **extra)
        except ValueError as e:
            # Datasets without named configs call their only one "default" in
            # some sources and expect no name in others.
            if name != "default" or "not found" not in str(e):
                raise
            ds = load(data_ref, name=None, streaming=True, **extra)
    except errors as e:
        raise RowsUnavailable(*_classify(e, data_ref, config)) from None
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e):
            raise
        raise RowsUnavailable(
            RowsReason.SCRIPT_ONLY,
            f"{data_ref} is a script-based dataset; dynogen never runs dataset scripts",
        ) from None
    available = list(ds.keys())
    if splits:
        order = [s for s in splits if s in ds]
        missing = tuple(s for s in splits if s not in ds)
    else:
        order, missing = available, ()
    if order and allow is not None:
        kept = [s for s in order if allow(s)]
        if not kept:
            raise RowsUnavailable(
                RowsReason.NO_TRAINING_SPLIT,
                f"{data_ref}: no split the split policy allows among {order} "
                "(--splits all lifts it)",
            )
        order = kept
    if not order:
        raise RowsUnavailable(
            RowsReason.SPLIT_NOT_FOUND,
            f"{data_ref}: none of the splits {list(splits or [])} exist (found {available})",
        )
    features = ds[order[0]].features
    info = RowsInfo(
        features=features,
        labels=label_names(features),
        splits=tuple(order),
        missing_splits=missing,
        columns=tuple(features) if features else (),
    )
    return Rows(ds, info, rows_per_split, errors, data_ref)


def iter_rows(
    data_ref: str,
    config: str | None,
    *,
    splits: Sequence[str] | None = None,
    rows_per_split: int,
    load: Loader | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(split, row)`` pairs; use ``open_rows`` when the label names are needed too."""
    return iter(
        open_rows(data_ref, config, splits=splits, rows_per_split=rows_per_split, load=load)
    )


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this dataset cannot be read", as opposed to a bug of ours.

    ``ValueError`` is on the list because ``datasets`` and ``pyarrow`` use it
    (and ``ArrowInvalid``, a subclass) for malformed data files and unknown configs.
    """
    import pyarrow
    from datasets.exceptions import DatasetsError
    from huggingface_hub.errors import HfHubHTTPError

    errors: tuple[type[BaseException], ...] = (
        DatasetsError,
        OSError,
        ValueError,
        pyarrow.ArrowException,
        HfHubHTTPError,
    )
    # huggingface_hub's HTTP client (httpx2 in hub 2.x, httpx before) raises its
    # timeouts and transport errors outside OSError while streaming from the Hub.
    for module in ("httpx2", "httpx"):
        try:
            http = importlib.import_module(module)
        except ImportError:
            continue
        errors += (http.HTTPError,)
    return errors


def _classify(e: BaseException, data_ref: str, config: str | None) -> tuple[str, str]:
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    msg = _short(e)
    if "OfflineModeIsEnabled" in msg or (isinstance(e, ConnectionError) and _offline()):
        return RowsReason.OFFLINE, f"{data_ref}: {msg}"
    status = _http_status(e)
    if status == 429:
        return RowsReason.RATE_LIMITED, f"{data_ref}: HTTP 429: {msg}"
    if status is not None and status >= 500:
        return RowsReason.SERVER_ERROR, f"{data_ref}: HTTP {status}: {msg}"
    if isinstance(e, TimeoutError) or "Timeout" in type(e).__name__:
        return RowsReason.TIMEOUT, f"{data_ref}: {type(e).__name__}: {msg}"
    if isinstance(e, ConnectionError) or type(e).__name__ in _CONNECTION_ERRORS:
        return RowsReason.CONNECTION, f"{data_ref}: {type(e).__name__}: {msg}"
    if isinstance(e, DatasetNotFoundError):
        if "gated" in msg:
            return RowsReason.GATED, f"{data_ref}: {msg}"
        return RowsReason.NOT_FOUND, f"{data_ref}: {msg}"
    if isinstance(e, (EmptyDatasetError, DataFilesNotFoundError)):
        return RowsReason.NO_DATA_FILES, f"{data_ref}: {msg}"
    if isinstance(e, FileNotFoundError):
        return RowsReason.NOT_FOUND, f"{data_ref}: {msg}"
    if isinstance(e, ValueError) and "BuilderConfig" in msg and "not found" in msg:
        return RowsReason.CONFIG_NOT_FOUND, f"{data_ref} has no config {config!r}: {msg}"
    return RowsReason.LOAD_ERROR, f"{data_ref}: {type(e).__name__}: {msg}"


# httpx/httpx2 transport errors below HTTP (named, not imported: either may be absent)
_CONNECTION_ERRORS = frozenset({"ConnectError", "ReadError", "WriteError", "RemoteProtocolError",
                                "NetworkError", "TransportError", "ProtocolError"})


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _http_status(e: BaseException) -> int | None:
    """The HTTP status of a ``huggingface_hub`` error (``e.response.status_code``), if any."""
    response = getattr(e, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
