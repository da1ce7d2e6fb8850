"""What the command-line entry points share: bad input ends in one clear line, not a traceback."""
import sys
from typing import Any, Callable, Optional

from .checkpoint import CheckpointError
from .engine import DivergedError, NonFiniteLossError

__all__ = ['USER_ERRORS', 'run_cli', 'set_interrupt_hint']

# Errors whose message already names the bad input and the fix (ConnectionError and PermissionError: the Hub push
# names the server it could not reach or that refused the token; huggingface_hub's offline mode names its switch).
USER_ERRORS = (ValueError, FileNotFoundError, ConnectionError, PermissionError, CheckpointError, NonFiniteLossError,
               DivergedError)


_interrupt_hint: Optional[Callable[[], str]] = None


def set_interrupt_hint(hint: Optional[Callable[[], str]]) -> None:
    """From now on, Ctrl-C under :func:`run_cli` prints ``interrupted: <hint()>`` (e.g. how to resume a run)."""
    global _interrupt_hint
    _interrupt_hint = hint


def run_cli(main: Callable[[], Any]) -> Any:
    """Run ``main``; a user error prints ``error: <message>`` to stderr and exits with status 2, and Ctrl-C prints
    one ``interrupted`` line (with the hint ``main`` set, if any) instead of a traceback and exits with status 130, as
    a shell reports SIGINT."""
    set_interrupt_hint(None)
    try:
        return main()
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        hint = _interrupt_hint() if _interrupt_hint is not None else ''
        print('interrupted' + (f': {hint}' if hint else ''), file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        set_interrupt_hint(None)
