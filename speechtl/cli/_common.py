"""What every command-line tool shares: one-line errors and warnings, exit codes, ``--debug``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..errors import SpeechtlError
from ..fileio import out_in_use  # noqa: F401  (the CLIs' check of --out)

T = TypeVar("T")
EXIT_USAGE = 2
# OSErrors the user fixes (space, quota, permissions, a read-only disk), not bugs: one line, no traceback.
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def call_printing_warnings(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, then every warning it raised (repeats too) as one ``warning: ...`` line on stderr.

    Printed after the call, so they do not tear a progress bar, and in full even with ``--debug``.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return result


def comma_list(value: str) -> list[str]:
    """An argparse ``type``: ``"us, gb,,german"`` -> ``["us", "gb", "german"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def comma_list_or_none(value: str) -> list[str]:
    """:func:`comma_list`, where ``none`` is the empty list."""
    return [] if value.lower() == "none" else comma_list(value)


def name_or_none(value: str) -> str | None:
    """An argparse ``type``: the value, or None for ``none``."""
    return None if value.lower() == "none" else value


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def library_bars(show: bool) -> Iterator[None]:
    """With ``--no-progress`` (``show`` False), transformers' and the hub's own bars (loading weights,
    downloads) are off too for the call, and put back as they were after it. :func:`run_cli` applies it
    for tools with ``--no-progress``; ``speechtl-adapt`` for ``progress=false`` and ranks other than 0."""
    if show:
        yield
        return
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    hf_on, hub_on = hf_logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        if hf_on:
            hf_logging.enable_progress_bar()  # which turns the hub's on too: its own state is put back after
        if hub_on:
            hub.enable_progress_bars()
        else:
            hub.disable_progress_bars()


def _own_message(e: SpeechtlError) -> str:
    """The error's message. Raised in a DataLoader worker (``num_workers`` > 0), it comes back as the same
    type holding the worker's traceback, whose last line is ``module.Type: message``."""
    text = str(e)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def run_cli(
    main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None,
    *, intermixed: bool = False,
) -> int:
    """Parse ``argv`` and run ``main(args)``.

    A :class:`SpeechtlError` (bad input the user can fix) becomes one ``error: ...`` line on
    stderr and exit status 2, and so does an ``OSError`` of a full disk, a quota, a read-only
    filesystem or missing permissions; with ``--debug`` (or ``SPEECHTL_DEBUG=1``) they are
    re-raised with their traceback. Warnings print as one ``warning: ...`` line each (with
    ``--debug`` in Python's usual form). Ctrl-C exits 130 without a traceback.
    """
    # intermixed: key=value positionals may come before, between and after the options.
    args = parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("SPEECHTL_DEBUG") == "1"
    try:
        with warnings.catch_warnings(), library_bars(not getattr(args, "no_progress", False)):
            if not debug:
                warnings.showwarning = _one_line_warning
            return int(main(args) or 0)
    except SpeechtlError as e:
        if debug:
            raise
        print(f"error: {_own_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if debug or e.errno not in _USER_OS_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; free some disk space or fix the permissions, "
              "or choose another output path", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
