"""Hand-over between pipeline stages: a one-place slot where the newest item wins.

A slow stage never builds a backlog: putting an item into a full slot replaces the unread one,
which is counted as dropped. ``get`` waits on a condition variable (no polling).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

Item = TypeVar("Item")


class LatestSlot(Generic[Item]):
    """Holds at most one item; :meth:`put` replaces an unread item (counted in :attr:`dropped`).

    Thread ownership: any number of producers and consumers; all state is guarded by one lock.
    """

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._item: Item | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Item) -> bool:
        """Offer ``item``; True when it replaced an unread one (a dropped frame)."""
        with self._ready:
            replaced = self._item is not None
            self.dropped += int(replaced)
            self._item = item
            self._ready.notify()
            return replaced

    def get(self, timeout: float) -> Item | None:
        """The newest item, waiting up to ``timeout`` s; None on timeout or once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiting :meth:`get`; later gets return what is left, then None."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
