"""What KEDA measures is what Celery writes: a task sent to a queue is one item on the Redis list that
infra/k8s/keda.yaml names for that queue, in the broker's database."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from atelier_contracts.catalogue import STAGE_QUEUES
from atelier_contracts.tasks import ALL_QUEUES, T_START_JOB, stage_task_name
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings

pytestmark = pytest.mark.integration

KEDA = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "keda.yaml"
ROUTED = {"orchestrator": T_START_JOB, **{q: stage_task_name(s) for s, q in reversed(STAGE_QUEUES.items())}}


def test_each_queue_is_the_redis_list_its_scaled_object_reads(redis_url: str) -> None:
    lists = {d["spec"]["triggers"][0]["metadata"]["listName"]: d["spec"]["triggers"][0]["metadata"]
             for d in yaml.safe_load_all(KEDA.read_text()) if d and d["kind"] == "ScaledObject"}
    assert set(lists) == set(ALL_QUEUES)
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    app = make_celery(Settings(broker_url=redis_url))
    try:
        for n, queue in enumerate(ALL_QUEUES, start=1):
            # routed by task name exactly as the orchestrator and the API send them (a queue no stage uses
            # yet, like gpu.identity, is addressed directly)
            name = ROUTED.get(queue)
            if name is None:
                app.send_task("atelier.k8s.probe", args=[n], queue=queue)
            else:
                app.send_task(name, args=[f"job_probe_{n}"])
            for other in ALL_QUEUES:
                expected = 1 if ALL_QUEUES.index(other) < n else 0
                assert r.llen(other) == expected, f"after sending to {queue}: LLEN {other} = {r.llen(other)}"
        db = urlsplit(redis_url).path.lstrip("/") or "0"
        # keda.yaml watches database 0 (the ConfigMap's broker URL); here the test's own database stands in
        assert all(meta.get("databaseIndex", "0") == "0" for meta in lists.values()) and db.isdigit()
    finally:
        app.close()
        r.flushdb()
