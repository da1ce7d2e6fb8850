"""What the command-line entry points share: bad input ends in one clear line, not a traceback."""
import sys
from typing import Any, Callable

from .checkpoint import CheckpointError
from .engine import DivergedError, NonFiniteLossError

__all__ = ['USER_ERRORS', 'run_cli']

# Errors whose message already names the bad input and the fix.
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError, DivergedError)


def run_cli(main: Callable[[], Any]) -> Any:
    """Run ``main``; a user error prints ``error: <message>`` to stderr and exits with status 2."""
    try:
        return main()
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
