"""A bare FastAPI app — one ``POST /v1/jobs`` route answering 202 — served like ``atelier serve``.

bench/api_bench.py measures it next to the real API in the same run: same server stack (``uvicorn.run``
in one process with the default loop and HTTP implementation, uvloop and httptools here, ``log_level``
info with the access log, as ``atelier serve`` calls it), same body, same wrk settings. What the real
route costs beyond this is Atelier's own work: the bearer-key lookup, spec validation, the job and
event rows in PostgreSQL, the commit and the message to the broker.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fastapi import FastAPI

app = FastAPI(title="bare")


@app.post("/v1/jobs", status_code=202)
def submit(body: dict[str, Any]) -> dict[str, Any]:
    # a sync route like the real one, so both pay the same thread-pool hand-off
    return {"id": "job_bare", "kind": body.get("kind"), "status": "queued"}


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1, help="processes, as `atelier serve --workers`")
    args = ap.parse_args(argv)
    # the arguments `atelier serve` passes (atelier/src/atelier/cli.py)
    options: dict[str, Any] = {"host": args.host, "port": args.port, "log_level": "info",
                               "timeout_graceful_shutdown": 30}
    if args.workers > 1:  # each process imports the app, as `atelier serve --workers` does with its factory
        uvicorn.run("bare_api:app", workers=args.workers, app_dir=str(Path(__file__).resolve().parent), **options)
    else:
        uvicorn.run(app, **options)


if __name__ == "__main__":
    main()
