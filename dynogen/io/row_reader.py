"""One way to ask for a unit's rows, wherever they are.

A unit's ``data_ref`` is a local folder (an absolute path, or a path that
exists) or a Hub id. ``RowReader.read`` sends the first to ``rows.open_rows``
(``datasets`` reading the folder's files, in a worker thread, one folder at a
time, as before) and the second to ``hub_rows.HubRowReader`` (viewer pages or
Parquet ranges, as many at once as the Hub's buckets allow). Both give a
``UnitRows`` or raise ``RowsUnavailable``; the callers (the data policies'
gate, the instance stage) never know which.

>>> async with RowReader(hub=HubRowReader.open(), cache_dir="runs/a/.hf-cache") as reader:
...     rows = await reader.read("org/set", "default", splits=("train",),
...                              rows_per_split=200)                    # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from dynogen.io.hub_rows import HubRowReader
from dynogen.io.rows import UnitRows, open_rows

__all__ = ["RowReader", "is_local"]

Opener = Callable[..., Any]


def is_local(data_ref: str) -> bool:
    """A folder on this machine (what ``datasets.load_dataset`` would also take as one)."""
    return os.path.isabs(data_ref) or os.path.exists(data_ref)


class RowReader:
    """Rows of local folders and Hub datasets behind one ``read``; one per event loop.

    ``hub``: the Hub reader (``None``: Hub ids go to ``opener`` too, as ``datasets``
    streaming did). ``opener`` reads local folders (``open_rows``; injectable).
    """

    def __init__(self, hub: HubRowReader | None = None, *, cache_dir: str | None = None,
                 opener: Opener = open_rows) -> None:
        self.hub = hub
        self.cache_dir = cache_dir
        self.opener = opener
        self._local: asyncio.Lock | None = None

    async def read(self, data_ref: str, config: str | None, *,
                   splits: Sequence[str] | None = None, rows_per_split: int,
                   allow: Callable[[str], bool] | None = None) -> UnitRows:
        """The unit's rows, whole; raises ``RowsUnavailable``."""
        if self.hub is not None and not is_local(data_ref):
            return await self.hub.read(data_ref, config, splits=splits,
                                       rows_per_split=rows_per_split, allow=allow)
        if self._local is None:
            self._local = asyncio.Lock()
        async with self._local:  # `datasets` reads one folder at a time, as it always did
            return await asyncio.to_thread(self._read_local, data_ref, config, splits,
                                           rows_per_split, allow)

    def _read_local(self, data_ref: str, config: str | None, splits: Sequence[str] | None,
                    rows_per_split: int, allow: Callable[[str], bool] | None) -> UnitRows:
        rows = self.opener(data_ref, config, splits=splits or None,
                           rows_per_split=rows_per_split, cache_dir=self.cache_dir, allow=allow)
        return UnitRows(rows.info, tuple(rows))

    async def aclose(self) -> None:
        if self.hub is not None:
            await self.hub.aclose()

    async def __aenter__(self) -> RowReader:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, err: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
