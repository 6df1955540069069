"""An estimate counts tokens with a model on a thread of its own: a restart or a shutdown
frees the model only once it is done, and no count starts after that."""

from __future__ import annotations

import threading

import pytest

from batchd.engines.base import EngineUnavailable
from batchd.engines.llamacpp import _Users


def test_the_model_is_freed_only_after_the_counts_using_it() -> None:
    users = _Users()
    counting, finish = threading.Event(), threading.Event()

    def count() -> None:
        with users.use():
            counting.set()
            finish.wait(10)

    counter = threading.Thread(target=count)
    counter.start()
    assert counting.wait(10)
    closer = threading.Thread(target=users.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waits for the count
    finish.set()
    closer.join(10)
    counter.join(10)
    assert not closer.is_alive()
    with pytest.raises(EngineUnavailable), users.use():
        pass
