"""A line of waiters for a shared resource: the most urgent priority first, and within it the
owners (tenants) in turn, each owner's own waiters first come, first served. One owner's
hundred waiters then delay another owner's one by at most one turn, not a hundred."""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

W = TypeVar("W")


class FairLine(Generic[W]):
    def __init__(self) -> None:
        # priority → owner → that owner's waiters; owners in turn order (the next first)
        self._queues: dict[int, collections.OrderedDict[str, collections.deque[W]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, waiter: W, *, priority: int, owner: str) -> None:
        if priority not in self._queues:
            self._queues = dict(sorted({**self._queues,
                                        priority: collections.OrderedDict()}.items()))
        queues = self._queues[priority]
        queue = queues.get(owner)
        if queue is None:
            queue = queues[owner] = collections.deque()
        queue.append(waiter)
        self._size += 1

    def pop(self) -> W | None:
        """The next waiter (None when none waits); its owner's turn passes to the next."""
        for queues in self._queues.values():
            if queues:
                owner, queue = next(iter(queues.items()))
                waiter = queue.popleft()
                if queue:
                    queues.move_to_end(owner)
                else:
                    del queues[owner]
                self._size -= 1
                return waiter
        return None

    def put_back(self, waiter: W, *, priority: int, owner: str) -> None:
        """`waiter`, popped but not served, at the head of its owner's queue again."""
        queues = self._queues[priority]
        queue = queues.get(owner)
        if queue is None:
            queue = queues[owner] = collections.deque()
        queues.move_to_end(owner, last=False)  # its turn again, as before the pop
        queue.appendleft(waiter)
        self._size += 1

    def remove(self, waiter: W, *, priority: int, owner: str) -> bool:
        """Take `waiter` out of the line (it gave up); False if it was not in it."""
        queues = self._queues.get(priority)
        queue = queues.get(owner) if queues is not None else None
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue and queues is not None:
            del queues[owner]
        self._size -= 1
        return True
