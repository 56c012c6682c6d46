"""Quality gates: best-of-N regeneration of items that fail a check, within a per-job budget.

A *gate stage* checks the output of the stage it follows on the same item (``gate.identity[s2]`` checks
``gpu.scene[s2]``, ``gate.critic[1080x1080-v0]`` checks ``gpu.background[1080x1080-v0]``; ``GATE_TARGETS``
says which, one gate per target). Its worker returns::

    {"gates": [{"name": "identity", "score": 0.31, "passed": false, "detail": "..."}, ...],
     "passed": false,            # all gates passed
     "score": 0.31,              # what best-of-N maximises (null: nothing measurable, e.g. no face)
     "regenerate": true,         # a new seed could help
     "artifact_key": "...",      # the artifact that was scored (its meta gets the scores)
     "report": {...},            # optional: the gate's full report (e.g. the critic's per-region verdicts)
     "warnings": ["..."], "strict": false,
     "repair": {...}}            # optional, with regenerate: repair these regions of this artifact in place

``gate_done`` (called by ``engine.stage_done`` when a gate stage succeeds) then decides:

* passed → the job moves on;
* failed, ``regenerate`` asked, fewer than ``gate_max_attempts`` attempts for this item and fewer than
  ``gate_max_regenerations`` regenerations spent by the whole job → the target item and the gate row go
  back to ``pending``; the engine re-queues the target with ``StageTask.regeneration`` = attempts so far
  (the stage offsets its seed by it and writes a new artifact name), then the gate again; when the gate's
  attempt carried a ``repair`` (the critic's failed regions), the task carries it as ``StageTask.repair`` and the
  target inpaints those regions of the judged image instead of drawing a new one (a gate asks for a repair
  once; an attempt that was a repair and still fails gets a new seed);
* otherwise the best-scoring attempt is kept: the target row's output is set back to that attempt's
  output (what downstream stages read), the gate row records every attempt and which one was kept, and
  a ``job.warning`` event says the item did not pass. With ``strict`` in the gate's output the job fails
  instead.

A regeneration that scored the same artifact key as an earlier attempt means the target stage ignored
``StageTask.regeneration`` (same seed, same name: the same image again), so no further attempt is asked
for that item; the budget is not spent on copies.

Every attempt's scores (and ``report``, when the gate gives one) are written into the meta of the artifact
it scored (``meta.gates[<gate stage>]``), and the kept one is marked ``meta.gate_selected``, so
``GET /v1/jobs/{id}/artifacts`` shows all attempts. The
history lives in the gate row's ``output.attempts`` (also while the row is pending again), so no schema
change is needed and a restarted orchestrator continues where it was.
"""

from __future__ import annotations

import logging
from typing import Any

from atelier_contracts.catalogue import gates as catalogue_gates
from atelier_contracts.stage_io import GateOutput
from atelier_control.events import emit
from atelier_control.models import Artifact, Job, Stage, utcnow
from atelier_runtime.settings import Settings
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from .jobstate import finish_job

log = logging.getLogger(__name__)

# gate stage -> the stage whose item it regenerates (same item space), as the stage catalogue declares them
GATE_TARGETS: dict[str, str] = catalogue_gates()
_TARGET_GATES: dict[str, str] = {target: gate for gate, target in GATE_TARGETS.items()}
# regeneration numbers, attempt histories and best-of-N are per (gate, item): a second gate on the same target
# would need them per target item instead (both gates re-judging every regeneration), so it is refused here
if len(_TARGET_GATES) != len(GATE_TARGETS):
    raise RuntimeError(f"one gate per target stage: {GATE_TARGETS}")


def is_gate(stage_name: str) -> bool:
    return stage_name in GATE_TARGETS


def history(row: Stage) -> list[dict[str, Any]]:
    """Attempts recorded so far on a gate row (read before its output is overwritten)."""
    if not is_gate(row.name) or not isinstance(row.output, dict):
        return []
    attempts = row.output.get("attempts")
    return list(attempts) if isinstance(attempts, list) else []


def _gate_of(row: Stage) -> Stage | None:
    """The gate row of ``row``'s item (``row`` itself when it is a gate), or None."""
    gate_name = row.name if is_gate(row.name) else _TARGET_GATES.get(row.name)
    if gate_name is None:
        return None
    if gate_name == row.name:
        return row
    session = object_session(row)
    if session is None:
        return None
    # the engine loaded every row of the job under its lock in this transaction: take the gate's from the session
    for obj in session.identity_map.values():
        if isinstance(obj, Stage) and obj.job_id == row.job_id and obj.name == gate_name and obj.item == row.item:
            return obj
    return session.scalar(select(Stage).where(Stage.job_id == row.job_id, Stage.name == gate_name,
                                              Stage.item == row.item))


def _regeneration(gate: Stage) -> int:
    n = len(history(gate))
    # a finished gate row holds its final attempt too; a pending one only the attempts that asked for more
    return n - 1 if gate.status == "succeeded" and n else n


def regeneration_for(row: Stage) -> int:
    """``StageTask.regeneration`` for a row: how many times a gate has regenerated its item so far."""
    gate = _gate_of(row)
    return 0 if gate is None else _regeneration(gate)


def regeneration_and_repair(row: Stage) -> tuple[int, dict[str, Any] | None]:
    """``StageTask.regeneration`` and ``StageTask.repair`` for a row: for a gate's target being regenerated, the
    repair the gate's last attempt asked for (the regions to inpaint in place), else None (a new seed)."""
    gate = _gate_of(row)
    if gate is None:
        return 0, None
    n = _regeneration(gate)
    if gate is row or n == 0 or gate.status == "succeeded":
        return n, None
    last = history(gate)[-1]
    repair = last.get("repair")
    return n, repair if isinstance(repair, dict) else None


def regenerations_used(session: Session, job_id: str, *, exclude: str) -> int:
    """Regenerations the job's gates have asked for so far (``exclude``: the row being decided)."""
    used = 0
    for gate in session.scalars(select(Stage).where(Stage.job_id == job_id, Stage.name.in_(list(GATE_TARGETS)),
                                                    Stage.id != exclude)):
        n = len(history(gate))
        used += max(n - 1, 0) if gate.status == "succeeded" else n
    return used


def _score(attempt: dict[str, Any]) -> float:
    score = attempt.get("score")
    return float(score) if isinstance(score, int | float) else float("-inf")


def _annotate(session: Session, job: Job, key: Any, gate_name: str, attempt: dict[str, Any],
              selected: bool | None = None, report: Any = None) -> None:
    if not isinstance(key, str):
        return
    art = session.scalar(select(Artifact).where(Artifact.key == key, Artifact.job_id == job.id))
    if art is None:
        return
    meta = dict(art.meta or {})
    if attempt:
        gates = dict(meta.get("gates") or {})
        gates[gate_name] = {k: attempt.get(k) for k in ("regeneration", "score", "passed", "gates", "detail")}
        if report is not None:  # the gate's full report lives with the artifact, not in the row's history
            gates[gate_name]["report"] = report
        meta["gates"] = gates
    if selected is not None:
        meta["gate_selected"] = selected
    art.meta = meta  # a new dict, so the JSON column is written


def gate_done(session: Session, job: Job, row: Stage, previous: list[dict[str, Any]], *, settings: Settings) -> str:
    """Act on a gate stage's result (``row.output`` is the worker's output). Returns pass | regenerate | keep | fail."""
    target_name = GATE_TARGETS.get(row.name)
    if target_name is None:
        return "pass"
    out = dict(row.output or {})
    verdict = GateOutput.model_validate(out)
    target = session.scalar(select(Stage).where(Stage.job_id == job.id, Stage.name == target_name,
                                                Stage.item == row.item))
    n = len(previous)
    attempt = {
        "regeneration": n, "score": verdict.score, "passed": verdict.passed, "gates": out.get("gates") or [],
        "detail": verdict.detail, "artifact_key": verdict.artifact_key, "warnings": verdict.warnings,
        "target_output": target.output if target is not None else None,
        "repair": verdict.repair.model_dump(mode="json") if verdict.repair is not None else None,
    }
    attempts = [*previous, attempt]
    _annotate(session, job, attempt["artifact_key"], row.name, attempt, report=verdict.report)
    passed = verdict.passed
    # the target wrote an artifact already scored: it ignores StageTask.regeneration, another try is a copy
    repeated = attempt["artifact_key"] is not None and any(
        a.get("artifact_key") == attempt["artifact_key"] for a in previous)
    wants = verdict.regenerate and not passed and target is not None and not repeated
    used = regenerations_used(session, job.id, exclude=row.id) + n
    can = wants and n + 1 < settings.gate_max_attempts and used < settings.gate_max_regenerations
    decision = "pass" if passed else ("regenerate" if can else "keep")
    emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.gate",
         data={"stage": row.name, "item": row.item, "regeneration": n, "score": verdict.score, "passed": passed,
               "decision": decision, "budget_used": used + (1 if can else 0),
               "budget": settings.gate_max_regenerations})
    if decision == "regenerate":
        assert target is not None
        row.status, row.output, row.attempts, row.error = "pending", {"attempts": attempts}, 0, None
        target.status, target.attempts, target.error = "pending", 0, None
        target.queued_at = row.queued_at = None
        target.finished_at = row.finished_at = None
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.regenerating",
             data={"stage": target.name, "item": row.item, "regeneration": n + 1, "gate": row.name,
                   "score": verdict.score, "repair": [r.index for r in verdict.repair.regions]
                   if verdict.repair is not None else None})
        return decision
    if len(attempts) > 1:
        # best of N: the highest score (ties: the earlier attempt); its output is what downstream stages read
        best = max(attempts, key=lambda a: (_score(a), -a["regeneration"]))
        if target is not None and best is not attempt and best.get("target_output") is not None:
            target.output = best["target_output"]
        for a in attempts:  # by key: attempts that rewrote one artifact share its mark
            _annotate(session, job, a.get("artifact_key"), row.name, {},
                      selected=a is best or a.get("artifact_key") == best.get("artifact_key"))
    else:
        best = attempt
        _annotate(session, job, attempt["artifact_key"], row.name, {}, selected=True)
    final = best if best is not attempt else out
    row.output = {**{k: v for k, v in final.items() if k != "target_output"}, "attempts": attempts,
                  "kept": best["regeneration"], "passed": best.get("passed") is True}
    if decision == "pass":
        return decision
    warning = (f"{row.name}[{row.item}] did not pass after {len(attempts)} attempt(s); kept regeneration "
               f"{best['regeneration']} (score {best.get('score')}): "
               + "; ".join(str(w) for w in (best.get("warnings") or attempt["warnings"] or [best.get("detail")])))
    if repeated:
        warning += (f" ({target_name} rewrote the same artifact when regenerated: it does not apply "
                    "StageTask.regeneration, so no further attempt was made)")
    row.output["warnings"] = [warning]
    emit(session, tenant_id=job.tenant_id, job_id=job.id, type="job.warning",
         data={"stage": row.name, "item": row.item, "warning": warning})
    if verdict.strict:
        row.status, row.error, row.finished_at = "failed", warning, utcnow()
        emit(session, tenant_id=job.tenant_id, job_id=job.id, type="stage.failed",
             data={"stage": row.name, "item": row.item, "attempt": row.attempts, "error": warning})
        finish_job(session, job, "failed", error=f"strict gate: {warning}")
        return "fail"
    return decision
