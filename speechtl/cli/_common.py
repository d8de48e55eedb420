"""What every command-line tool shares: one-line errors, exit codes, ``--debug``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import SpeechtlError

EXIT_USAGE = 2


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run ``main(args)``.

    A :class:`SpeechtlError` (bad input the user can fix) becomes one ``error: ...`` line on
    stderr and exit status 2; with ``--debug`` (or ``SPEECHTL_DEBUG=1``) it is re-raised with
    its traceback. Ctrl-C exits 130 without a traceback.
    """
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("SPEECHTL_DEBUG") == "1"
    try:
        return int(main(args) or 0)
    except SpeechtlError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
