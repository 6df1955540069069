import asyncio

import pytest

from batchd import event_loop

uvloop = pytest.importorskip("uvloop")  # not on Windows (pyproject)


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_and_uvloop_run_on_uvloop_and_asyncio_on_its_own() -> None:
    assert issubclass(event_loop.run(_loop_type(), "auto"), uvloop.Loop)
    assert issubclass(event_loop.run(_loop_type(), "uvloop"), uvloop.Loop)
    loop_type = event_loop.run(_loop_type(), "asyncio")
    assert not issubclass(loop_type, uvloop.Loop)
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_auto_falls_back_where_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails as if not installed
    assert event_loop.loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ImportError):
        event_loop.loop_factory("uvloop")
