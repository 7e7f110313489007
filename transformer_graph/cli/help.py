"""One argument-parser shape for every command: a description, each option's default, examples.

The console scripts (``tg-train``, ...) and ``scripts/*.py`` run the same parser, so the
usage line names the installed command whichever way it was started.
"""
from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence

DESCRIPTION_WIDTH = 88


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and examples' line breaks and appends ``(default: X)`` to an
    option whose help does not already say its default (None and off-switches have none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # Identity, not ==: a default of 0 is worth showing, False (an off switch) is not.
        if ("default" in text or not action.option_strings
                or any(action.default is d for d in (None, False, argparse.SUPPRESS))):
            return text
        return f"{text} (default: %(default)s)"


def make_parser(prog: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
    """An :class:`argparse.ArgumentParser` for command ``prog`` with ``examples`` as its epilog."""
    # Wrapped here, since the formatter keeps line breaks as written (the examples need that).
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return argparse.ArgumentParser(prog=prog, description=textwrap.fill(description, DESCRIPTION_WIDTH),
                                   epilog=epilog, formatter_class=HelpFormatter)
