"""Importing a user's module named by an env name (`gym:<module>:<id>`, `python:<module>:<function>`): what
the module does wrong while being imported is one sentence saying where, never a traceback."""

from __future__ import annotations

import importlib
import traceback
from typing import Any

from uld.errors import UldError


def where(error: BaseException) -> str:
    """The file and line where user code raised `error` (its innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    if isinstance(error, SyntaxError) and error.filename:
        return f" at {error.filename}:{error.lineno}"
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def import_user_module(module_name: str, named_by: str) -> Any:
    """Import a user's module named by an env name; ImportError is left to the caller (a missing module).

    A module that fails in any other way (a syntax error, an exception, `sys.exit`) is one UldError saying
    where, and nothing of the run has been written yet.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise
    except SystemExit as exit_:
        raise UldError(f"{named_by} names the module {module_name}, which called sys.exit({exit_.code!r}) while being "
                       "imported; guard the script part of the module with if __name__ == '__main__':") from None
    except Exception as error:  # noqa: BLE001 - whatever user code raises is reported alike
        raise UldError(f"{named_by} names the module {module_name}, which failed while being imported "
                       f"({type(error).__name__}: {error}{where(error)}); fix the module") from None
