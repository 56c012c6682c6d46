"""``python -m atelier_api`` / ``atelier-api``: serve the API with uvicorn, settings from ``ATELIER_*``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    import uvicorn
    from atelier_shared.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(prog="atelier-api", description=__doc__)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    uvicorn.run("atelier_api.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, proxy_headers=True, log_level="info")


if __name__ == "__main__":
    main()
