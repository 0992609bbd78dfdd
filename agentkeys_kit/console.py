"""What the console scripts share: when the reader of standard output goes away (``agentkeys mint
oidc-jwt | head -c 60``, ``agentkeys-broker audit export | head``), the command ends quietly with
the status a shell gives a command its pipe's reader left (128 + SIGPIPE), as ``cat`` does,
instead of a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")
BROKEN_PIPE_STATUS = 141


def quiet_broken_pipe(main: Callable[P, int]) -> Callable[P, int]:
    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:  # also on SystemExit (argparse's --help): a late write fails here, not at exit
                sys.stdout.flush()
        except BrokenPipeError:
            # Python's documented remedy: point stdout at /dev/null so that the flush at exit is quiet
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return BROKEN_PIPE_STATUS

    return run
