"""Application loading: ``MODULE:ATTR`` to a ``Server`` (shared by the command line and the
worker processes of the launcher).

``ATTR`` names a ``Server``, or a callable (a factory) that returns one when called without
arguments. Every way this can fail raises ``AppLoadError`` with a one-line message meant for
a terminal; when the failure is an exception of the application (its module raised on import,
its factory raised), that exception is the ``__cause__``, for a traceback on request.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from .server import Server

__all__ = ["AppLoadError", "load_app"]


class AppLoadError(Exception):
    """``MODULE:ATTR`` does not give a ``Server``; the message says why, in one line."""


def _where(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised (the innermost frame), or ``""``."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``module_name`` itself (or a package on its path) is what is missing, rather
    than something the application imports."""
    missing = exc.name or ""
    return bool(missing) and (module_name == missing or module_name.startswith(missing + "."))


def _import(module_name: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_missing(exc, module_name):
            raise AppLoadError(
                f"cannot import module {module_name!r}: no module named {exc.name!r} "
                f"(the current directory is on the import path)"
            ) from None
        raise AppLoadError(
            f"importing module {module_name!r} failed: {_one_line(exc)}{_where(exc)}"
        ) from exc
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else f"line {exc.lineno}"
        raise AppLoadError(
            f"module {module_name!r} has a syntax error at {where}: {exc.msg}"
        ) from exc
    except Exception as exc:
        raise AppLoadError(
            f"importing module {module_name!r} failed: {_one_line(exc)}{_where(exc)}"
        ) from exc


def load_app(spec: str) -> Server:
    """Import ``MODULE:ATTR`` and return the ``Server`` it names (calling a factory once).

    The current directory goes first on ``sys.path`` (as ``python -m`` does), so an
    application next to the command finds its module. ``AppLoadError`` for any failure.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"expected MODULE:ATTR (for example myapp:app), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module = _import(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, Server):
        return obj
    if not callable(obj):
        raise AppLoadError(
            f"{spec} is neither a trio_socketcluster.Server nor a factory returning one "
            f"(it is a {type(obj).__name__})"
        )
    try:
        server = obj()
    except Exception as exc:
        raise AppLoadError(f"the factory {spec} raised {_one_line(exc)}{_where(exc)}") from exc
    if not isinstance(server, Server):
        raise AppLoadError(
            f"the factory {spec} returned a {type(server).__name__}, not a "
            "trio_socketcluster.Server"
        )
    return server
