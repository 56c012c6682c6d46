"""`make chaos`: 40 mixed jobs in services mode under SIGKILLs, a Redis restart, dropped PostgreSQL
connections and an API restart with SSE clients attached; writes bench/chaos.json."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos import ChaosConfig, dump, run_chaos  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "chaos.json")
    args = ap.parse_args()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl+C, so the harness stops its processes and drops its database
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from atelier_gpu.tiny import init_tiny

    work = ROOT / "bench" / ".work" / "chaos"
    shutil.rmtree(work, ignore_errors=True)
    models = init_tiny(ROOT / "bench" / ".work" / "models")
    result = run_chaos(ChaosConfig(jobs=args.jobs, kills=args.kills, seed=args.seed), work, models)
    args.out.write_text(dump(result) + "\n")
    print(dump(result))
    ok = all(result[k] == 0 for k in ("jobs_lost", "artifacts_missing", "orphan_keys", "sse_events_missed",
                                      "duplicate_webhooks_unexplained", "webhooks_missing", "stages_stuck"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
