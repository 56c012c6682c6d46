"""What the ``atelier`` commands print: lines and tables for people, or with ``--json`` data for scripts.

With ``--json`` a command prints exactly one JSON document on stdout (an object or a list) and nothing else there:
progress, hints and warnings go to stderr. Data that comes from the API keeps the API's field names (the SDK's
models dumped with ``model_dump(mode="json")``). An error is, on stdout too, the object::

    {"error": {"status": 404, "message": "job job_nope not found", "field": null, "errors": []}}

``status`` is the HTTP status of the API's answer (or the one the same error has in the API), null for an error
of this machine (a missing file, no API key); ``field`` the parameter or spec field at fault, when one is;
``errors`` every field error the API sent (``[{"field": ..., "message": ...}]``). The exit code is the one the
command has without ``--json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import Annotated, Any

import typer
from atelier_contracts.errors import AtelierError
from atelier_sdk import ApiError
from pydantic import BaseModel

JsonFlag = Annotated[bool, typer.Option(
    "--json", help='Print the result as one JSON document on stdout (an error as {"error": {...}}, same exit code); '
                   "messages go to stderr.")]


def jsonable(data: Any) -> Any:
    """DATA with pydantic models dumped as the API sends them (``mode="json"``), inside mappings and lists too."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, Mapping):
        return {str(k): jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(v) for v in data]
    return data


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(jsonable(data), indent=2, default=str))  # default: datetimes and paths as text


def emit(data: Any, json_mode: bool, human: str | Callable[[], object] = "") -> None:
    """Print DATA as one JSON document on stdout with ``--json``; otherwise print HUMAN for people (a text, or a
    function that prints)."""
    if json_mode:
        _print_json(data)
    elif callable(human):
        human()
    elif human:
        typer.echo(human)


def error_object(message: str, *, status: int | None = None, field: str | None = None,
                 errors: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``{"error": {...}}`` document of the module docstring."""
    return {"error": {"status": status, "message": message, "field": field,
                      "errors": [{"field": e.get("field"), "message": e.get("message")} for e in errors]}}


def fail(message: str, json_mode: bool, *, code: int = 1, status: int | None = None, field: str | None = None,
         errors: Sequence[Mapping[str, Any]] = (), human: str | None = None) -> typer.Exit:
    """Report an error and answer the ``typer.Exit(code)`` to raise: ``error: MESSAGE`` (or HUMAN as given) on
    stderr for people, the error object on stdout with ``--json``."""
    if json_mode:
        _print_json(error_object(message, status=status, field=field, errors=errors))
    else:
        typer.echo(f"error: {message}" if human is None else human, err=True)
    return typer.Exit(code)


def fail_api(exc: ApiError, json_mode: bool, *, code: int = 2, human: str | None = None) -> typer.Exit:
    """An error the API answered (a problem): its status, detail and field errors."""
    if human is None:
        human = "\n".join([f"error: {exc}", *(f"  {e.get('field')}: {e.get('message')}" for e in exc.errors)])
    fields = [str(e["field"]) for e in exc.errors if e.get("field")]
    return fail(exc.detail or exc.title, json_mode, code=code, status=exc.status, field=fields[0] if fields else None,
                errors=exc.errors, human=human)


def fail_atelier(exc: AtelierError, json_mode: bool, *, code: int = 1) -> typer.Exit:
    """An Atelier error raised on this machine (unknown tenant, name taken): its detail, field and the HTTP status the
    API gives it."""
    return fail(exc.detail, json_mode, code=code, status=exc.status, field=exc.field)


@contextmanager
def json_errors(json_mode: bool, *unexpected: type[BaseException]) -> Iterator[None]:
    """With ``--json``, what would otherwise leave the command as text becomes the error object: a bad parameter the
    command found itself (``typer.BadParameter``: a usage error, exit 2) and the UNEXPECTED exception types (a
    traceback's exit 1). Without ``--json`` both go on as before."""
    try:
        yield
    except typer.BadParameter as exc:
        if not json_mode:
            raise
        param = getattr(exc, "param", None)
        raise fail(exc.format_message(), True, code=exc.exit_code,
                   field=param.name if param is not None else None) from exc
    except unexpected as exc:
        if not json_mode:
            raise
        raise fail(f"{type(exc).__name__}: {exc}", True, code=1) from exc


@contextmanager
def stdout_to_stderr(json_mode: bool) -> Iterator[None]:
    """With ``--json``, what a library prints to stdout inside (diffusers, say) goes to stderr, so stdout holds the
    document alone."""
    if not json_mode:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield
