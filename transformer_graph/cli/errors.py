"""The one place where a command turns a user's mistake into one line and an exit code.

The library raises ValueError subclasses whose message names the argument, key or file,
what is wrong and the fix; a command shows exactly that message as one ``error: ...`` line
on stderr and exits with code 2 (argparse's code for a usage error), never a traceback.
Any other exception is a bug and keeps its traceback: hiding it would make it unreportable.

    @command
    def run(argv=None) -> dict: ...        # user errors -> "error: ..." and SystemExit(2)
"""
from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

from transformer_graph.checkpoint import CheckpointError
from transformer_graph.config import ConfigError
from transformer_graph.data.datasets import DataError
from transformer_graph.train.distributed import DistributedError
from transformer_graph.train.reproduce import SeedRunError
from transformer_graph.train.trainer import TrainingError

# Everything a user can cause and fix. All but TrainingError (a RuntimeError: the run itself
# failed, e.g. a NaN loss) are ValueErrors; ValueError stays last for the library's plain ones
# ("beam: expected a positive integer, got 0").
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, CheckpointError, DataError, TrainingError, SeedRunError, DistributedError, ValueError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a job stopped by Ctrl-C

F = TypeVar("F", bound=Callable)


def fail(message: object) -> NoReturn:
    """Print ``error: message`` on stderr and exit with :data:`EXIT_USER_ERROR`."""
    # One line even when a message quotes a multi-line value: the first line says what is wrong.
    text = str(message).strip() or type(message).__name__
    print(f"error: {' '.join(text.splitlines())}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run the block; a :data:`USER_ERRORS` exception becomes :func:`fail`, Ctrl-C exit code 130."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except USER_ERRORS as err:
        fail(err)


@contextmanager
def readable_warnings() -> Iterator[None]:
    """In the block, each warning is one ``warning: ...`` line on stderr (not Python's two lines of
    file, line number and source), shown every time; the caller's warning display is kept outside."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {' '.join(str(message).splitlines())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.simplefilter("always", UserWarning)
        yield


def command(fn: F) -> F:
    """Decorate a command's function with :func:`user_errors`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
