"""Ctrl-C and SIGTERM while a run trains: scoped to where they apply, never lost, never half a save.

    with stop_requests(on_request):      # fit(): the first signal asks to stop after this step
        ...
        with deferred_signals():         # a checkpoint save: a signal waits for its end
            save_checkpoint(...)

Outside :func:`stop_requests` (building the run, the final test evaluation) the handlers the
process had before apply again, so Ctrl-C there interrupts at once. Inside it, a second signal
stops at once (KeyboardInterrupt) -- except during a save, where it is delivered when the save is
complete, so a run never stops with its ``last.pt`` half-written or missing. Both do nothing
outside the main thread, where Python cannot install signal handlers.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _installable() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _handlers(handler) -> Iterator[dict]:
    """Install ``handler`` for :data:`SIGNALS`; yield the previous handlers, restore them on exit."""
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield previous
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: a handler set outside Python


@contextmanager
def stop_requests(on_request: Callable[[str], None]) -> Iterator[None]:
    """In the block, the first SIGINT/SIGTERM calls ``on_request(signal name)`` (the caller stops at
    its next safe point); a second raises KeyboardInterrupt."""
    if not _installable():
        yield
        return
    received: list[str] = []

    def handler(signum, _frame):
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
        on_request(received[0])

    with _handlers(handler):
        yield


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Run the block without interruption by SIGINT/SIGTERM: one that arrives meanwhile is handed,
    once the block is over, to the handler that was in place before it."""
    if not _installable():
        yield
        return
    pending: list[int] = []
    with _handlers(lambda signum, _frame: pending.append(signum)) as previous:
        yield
    for signum in pending:  # in the order received: Ctrl-C twice during a save still means "stop now"
        old = previous[signum]
        if callable(old):
            old(signum, None)
        elif old == signal.SIG_DFL:
            signal.raise_signal(signum)  # the default action (SIGTERM: terminate), now the save is done
