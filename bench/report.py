"""`make bench`'s last step: bench/REPORT.md and one PNG chart per figure, rendered from bench/results.json.

Every figure gets a section with its chart (bench/report/*.png, matplotlib's Agg backend) and what it
measures. A figure with a goal (overhead ratio at most 1.05, worker busy fraction at least 0.97,
scale-out at least 1.8x, submit p99 under 50 ms) that misses it gets two more paragraphs, written from
the figure's own detail in results.json: why it is missed, with what was measured, and what would
close it. A figure missing from results.json is reported as not measured.

    .venv/bin/python bench/report.py [--results bench/results.json] [--out bench/REPORT.md] [--charts bench/report]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
GOAL_COLOUR, BAR, BAR2, BAR3, MISS = "#C8102E", "#3B6EA5", "#9DB9D6", "#F0A202", "#C8102E"


@dataclass(frozen=True)
class Goal:
    op: str  # "<=", ">=" or "<"
    target: float
    text: str

    def met(self, value: float) -> bool:
        return {"<=": value <= self.target, ">=": value >= self.target, "<": value < self.target}[self.op]


GOALS = {
    "overhead_ratio": Goal("<=", 1.05, "at most 1.05"),
    "worker_busy_fraction": Goal(">=", 0.97, "at least 0.97"),
    "scaleout_ratio": Goal(">=", 1.8, "at least 1.8x"),
    "api_submit.p99_ms": Goal("<", 50.0, "under 50 ms"),
    "api_submit.ratio": Goal(">=", 0.3, "at least 0.3 of the bare route's req/s"),
}


@dataclass
class Section:
    key: str
    title: str
    chart: str | None = None
    value: str = "not measured"
    goal: Goal | None = None
    met: bool | None = None
    lines: list[str] = field(default_factory=list)
    why: list[str] = field(default_factory=list)
    close: list[str] = field(default_factory=list)


def _f(x: Any, nd: int = 2) -> str:
    return "—" if x is None else f"{x:,.{nd}f}"


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _bars(ax: Any, labels: list[str], values: list[float], colours: list[str] | str = BAR, fmt: str = "{:.2f}") -> None:
    bars = ax.bar(labels, values, color=colours)
    for b, v in zip(bars, values, strict=True):
        ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_ylim(0, max([*values, 1e-9]) * 1.18)  # room for the labels


def _goal_line(ax: Any, goal: Goal, label: str | None = None) -> None:
    ax.axhline(goal.target, color=GOAL_COLOUR, linestyle="--", linewidth=1.2, label=label or f"goal: {goal.text}")
    ax.legend(loc="best", fontsize=8)


def _cpu_sentence(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return ""
    parts = ", ".join(f"{name} {v:.1f}" for name, v in sorted(cpu.get("cpu_s", {}).items(), key=lambda kv: -kv[1])
                      if "(all)" not in name)
    return (f"CPU seconds in the {cpu['wall_s']:.1f} s measured: {parts}; everything else on the machine "
            f"(PostgreSQL, Redis, the S3 endpoint, the bench client and any other process) "
            f"{cpu.get('other_cpu_s', 0):.1f}. The cores were {cpu.get('machine_utilisation', 0):.0%} busy "
            f"({cpu.get('machine_busy_cpu_s', 0):.1f} of {cpu.get('machine_capacity_cpu_s', 0):.1f} CPU-s).")


def _shared(cpu: dict[str, Any] | None, threshold: float = 0.25) -> str:
    """A sentence when processes outside the bench took more than ``threshold`` of the cores during a measurement."""
    if not cpu or not cpu.get("machine_capacity_cpu_s"):
        return ""
    share = cpu.get("other_cpu_s", 0) / cpu["machine_capacity_cpu_s"]
    if share <= threshold:
        return ""
    return (f"The machine was shared: processes outside the bench's own (PostgreSQL and Redis included, but also "
            f"whatever else ran) took {share:.0%} of the cores' time during this measurement, so this figure is "
            f"slower and noisier than on a quiet machine.")


# ---------------------------------------------------------------- one function per figure

def stage_handoff(r: dict[str, Any], charts: Path) -> Section:
    s = Section("stage_handoff_ms", "Stage hand-off latency")
    h = r.get("stage_handoff_ms")
    if not h:
        return s
    s.value = f"p50 {_f(h['p50'])} ms, p95 {_f(h['p95'])} ms (n={h['n']})"
    fig, ax = plt.subplots(figsize=(5, 3.4))
    _bars(ax, ["p50", "p95"], [h["p50"], h["p95"]], [BAR, BAR2], "{:.1f} ms")
    ax.set_ylabel("ms")
    ax.set_title(f"Stage hand-off latency (n={h['n']} hand-offs)")
    _save(fig, charts / "stage_handoff.png")
    s.chart = "stage_handoff.png"
    s.lines.append("From the end of a stage item's last dependency (or of the previous task on the same worker) to "
                   "the start of the stage item: orchestration and broker latency of one hand-off, without queueing "
                   "behind busy workers (12-image campaign, services mode).")
    return s


def overhead(r: dict[str, Any], charts: Path) -> Section:
    s = Section("overhead_ratio", "Overhead ratio (12-image campaign)", goal=GOALS["overhead_ratio"])
    v = r.get("overhead_ratio")
    if v is None:
        return s
    d = r.get("overhead_detail", {})
    b = d.get("breakdown")
    s.value, s.met = f"{v:.3f}", s.goal.met(v)  # type: ignore[union-attr]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2.2]})
    _bars(axes[0], ["overhead ratio"], [v], MISS if not s.met else BAR, "{:.3f}")
    _goal_line(axes[0], GOALS["overhead_ratio"])
    axes[0].set_ylim(0, max(v, 1.05) * 1.5)  # room for the legend above the label
    axes[0].set_title("wall / diffusion time")
    if b:
        comps = [("before first image", b["before_first_image_s"]), ("in pipeline calls", b["in_pipeline_s"]),
                 ("diffusion worker\noutside calls", b["diffusion_worker_outside_pipeline_s"]),
                 ("after last image", b["after_last_image_s"]), ("client (HTTP, SSE)", b["client_s"])]
        left = 0.0
        colours = [BAR2, BAR, BAR3, "#7A9E7E", "#999999"]
        for (name, sec), c in zip(comps, colours, strict=True):
            axes[1].barh([0], [max(sec, 0)], left=left, color=c, label=f"{name}: {sec:.2f} s")
            left += max(sec, 0)
        axes[1].set_yticks([])
        axes[1].set_xlabel("seconds")
        axes[1].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
        axes[1].set_title(f"where the {d.get('wall_s', left):.1f} s went")
    else:
        _bars(axes[1], ["wall", "diffusion"], [d.get("wall_s", 0), d.get("diffusion_s", 0)], [BAR2, BAR], "{:.1f} s")
        axes[1].set_ylabel("seconds")
    _save(fig, charts / "overhead_ratio.png")
    s.chart = "overhead_ratio.png"
    s.lines.append(f"End-to-end wall time (POST → `job.succeeded`) of a {d.get('images', 12)}-image campaign divided "
                   f"by the time its diffusion calls took in the same run ({d.get('model', 'sdxl-bench')}, "
                   f"{d.get('gen_max_side', 256)} px): {_f(d.get('wall_s'))} s / {_f(d.get('diffusion_s'))} s.")
    if s.met:
        return s
    over = d.get("wall_s", 0) - d.get("diffusion_s", 0)
    why = [f"{over:.2f} s of the {_f(d.get('wall_s'))} s are not diffusion."]
    remedies: list[tuple[float, str]] = []
    if b:
        why.append(f"Before the first image: {b['before_first_image_s']:.2f} s (planning — `plan.ad_prompts`, "
                   f"`plan.ad_layout` — and their hand-offs); inside the diffusion span the diffusion worker spent "
                   f"{b['diffusion_worker_outside_pipeline_s']:.2f} s outside pipeline calls (taking and handing back "
                   f"tasks, PNG encoding, storage writes); after the last image: {b['after_last_image_s']:.2f} s "
                   f"(rendering, watermarking and delivering the last batch); the client: {b['client_s']:.2f} s "
                   f"(HTTP and SSE polling).")
        remedies += [
            (b["after_last_image_s"], "the tail after the last image is the render and watermark of the last batch, "
                                      "which can start only when that batch's pipeline call returns: smaller last "
                                      "batches (`ATELIER_GPU_MAX_BATCH`) or more renderer and watermark processes "
                                      "working the batch's items in parallel shorten it"),
            (b["diffusion_worker_outside_pipeline_s"], "the diffusion worker's time outside pipeline calls: overlap "
                                                       "PNG encoding and storage writes with the next call"),
            (b["before_first_image_s"], "the head before the first image: planning is on the critical path; "
                                        "shorter planner calls and faster hand-offs"),
        ]
    st = d.get("stage_seconds") or {}
    if st:
        why.append("Mean stage run times: " + ", ".join(f"`{n}` {x['mean_s']:.2f} s ×{x['n']}" for n, x in st.items())
                   + ".")
    if d.get("s_per_image_alone"):
        slow = d["s_per_image"] / d["s_per_image_alone"]
        why.append(f"Diffusion took {d['s_per_image']:.2f} s per image inside the pipeline against "
                   f"{d['s_per_image_alone']:.2f} s alone in one process ({slow:.2f}x): on "
                   f"{r.get('machine', {}).get('cpus', '?')} cores the renderer, the watermark worker, the API and "
                   f"PostgreSQL run beside it.")
        remedies.append((0.0, "on a GPU host the diffusion call runs on the GPU while rendering and watermarking use "
                              "CPU cores of their own, so the other stages no longer compete with it (here they share "
                              "2 cores)"))
    cpu = _cpu_sentence(d.get("cpu"))
    if cpu:
        why.append(cpu)
    if _shared(d.get("cpu")):
        why.append(_shared(d.get("cpu")))
    s.why = why
    s.close = [text for _, text in sorted(remedies, key=lambda kv: -kv[0])]
    return s


def worker_busy(r: dict[str, Any], charts: Path) -> Section:
    s = Section("worker_busy_fraction", "Diffusion worker busy fraction", goal=GOALS["worker_busy_fraction"])
    v = r.get("worker_busy_fraction")
    if v is None:
        return s
    d = r.get("worker_busy_detail", {})
    s.value, s.met = f"{v:.4f}", s.goal.met(v)  # type: ignore[union-attr]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    _bars(ax, ["busy fraction"], [v], BAR if s.met else MISS, "{:.3f}")
    _goal_line(ax, GOALS["worker_busy_fraction"])
    ax.set_ylim(0, 1.35)
    ax.set_title(f"{d.get('requests', '?')} queued backgrounds, one worker")
    _save(fig, charts / "worker_busy.png")
    s.chart = "worker_busy.png"
    s.lines.append(f"A real `atelier worker --queues gpu.diffusion` process drains {d.get('requests', '?')} queued "
                   f"background requests (batches of up to {d.get('max_batch', '?')}, batch sizes seen "
                   f"{d.get('batch_sizes', '?')}); share of its wall time ({_f(d.get('wall_s'))} s) inside pipeline "
                   f"calls ({_f(d.get('in_pipeline_s'))} s).")
    if not s.met and d:
        idle = d["wall_s"] - d["in_pipeline_s"]
        s.why = [f"{idle:.2f} s of {d['wall_s']:.2f} s were spent outside pipeline calls, "
                 f"{idle / max(1, d['requests']):.3f} s per request: taking tasks from the broker, reporting results, "
                 f"encoding and storing the images."]
        s.close = ["overlap the next call with the previous batch's encoding and storage writes (a writer thread), and "
                   "keep draining the queue (`ATELIER_GPU_DRAIN`) so the worker never waits on the broker"]
    return s


def scaleout(r: dict[str, Any], charts: Path) -> Section:
    s = Section("scaleout_ratio", "Scale-out: 2 diffusion worker processes vs 1", goal=GOALS["scaleout_ratio"])
    v = r.get("scaleout_ratio")
    if v is None:
        return s
    d = r.get("scaleout_detail", {})
    one, two = d.get("one_worker", {}), d.get("two_workers", {})
    s.value, s.met = f"{v:.3f}x", s.goal.met(v)  # type: ignore[union-attr]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    _bars(axes[0], ["1 worker", "2 workers"], [one.get("images_per_s", 0), two.get("images_per_s", 0)], [BAR2, BAR],
          "{:.3f}")
    axes[0].set_ylabel("images / s (end to end)")
    axes[0].set_title(d.get("workload", "campaign throughput"), fontsize=9)
    ceiling = _cpu_ceiling(d)
    labels, values, colours = ["campaign\nscale-out"], [v], [BAR if s.met else MISS]
    tier = d.get("diffusion_tier_alone")
    if tier:
        labels.append("diffusion tier\nalone")
        values.append(tier["ratio"])
        colours.append(BAR2)
    if ceiling is not None:
        labels.append("CPU-bound\nceiling here")
        values.append(ceiling)
        colours.append(BAR3)
    _bars(axes[1], labels, values, colours, "{:.2f}x")
    axes[1].axhline(2.0, color="#777777", linestyle=":", linewidth=1, label="ideal: 2x")
    _goal_line(axes[1], GOALS["scaleout_ratio"])
    axes[1].set_ylim(0, max(2.6, *values) * 1.1)
    axes[1].set_title(f"{d.get('cores', '?')} cores, {d.get('torch_threads_per_diffusion_worker', '?')} torch "
                      f"thread(s) per diffusion worker", fontsize=9)
    _save(fig, charts / "scaleout.png")
    s.chart = "scaleout.png"
    s.lines.append(f"Throughput (images/s, first POST to last terminal event) of {d.get('workload', 'the campaign')} "
                   f"with 2 `gpu.diffusion` worker processes over 1: {_f(two.get('images_per_s'), 3)} / "
                   f"{_f(one.get('images_per_s'), 3)} images/s. Each diffusion worker ran with "
                   f"{d.get('torch_threads_per_diffusion_worker', '?')} torch thread(s) "
                   f"(`{' '.join(f'{k}={x}' for k, x in d.get('thread_env', {}).items())}`) in both configurations, "
                   f"on {d.get('cores', '?')} cores; the diffusion phase alone (first background start to last "
                   f"background end) scaled {_f(d.get('diffusion_ratio'), 3)}x.")
    if one.get("rounds") and two.get("rounds"):
        s.lines.append(f"Best of {len(one['rounds'])} rounds per configuration; every round's images/s — one worker "
                       f"{[x['images_per_s'] for x in one['rounds']]}, two workers "
                       f"{[x['images_per_s'] for x in two['rounds']]}; CPU-s used outside the bench in each round — "
                       f"{[x['other_cpu_s'] for x in one['rounds']]} and {[x['other_cpu_s'] for x in two['rounds']]}.")
    if tier:
        s.lines.append(f"Diffusion tier alone ({tier['what']}): {tier['two_workers']['images_per_s']:.3f} / "
                       f"{tier['one_worker']['images_per_s']:.3f} images/s = {tier['ratio']:.3f}x.")
    if s.met:
        return s
    why = []
    c1, c2 = one.get("cpu", {}), two.get("cpu", {})
    if c1 and c2:
        diff1 = c1["cpu_s"].get("gpu-diffusion (all)", 0.0)
        own1 = sum(x for k, x in c1["cpu_s"].items() if "(all)" not in k)
        why.append(f"The workload is CPU-bound on {d.get('cores', '?')} cores, and diffusion is the smaller part of "
                   f"it: with one worker the bench's processes used {own1:.1f} CPU-s, of which the diffusion worker "
                   f"{diff1:.1f} ({diff1 / own1:.0%}); rendering (`render.ad` with its OCR checks), watermarking and "
                   f"C2PA signing, the API and the orchestrator used the rest. A second diffusion process can only "
                   f"take cores those stages already use.")
        if ceiling is not None:
            own2 = sum(x for k, x in c2["cpu_s"].items() if "(all)" not in k)
            why.append(f"With two workers the bench's processes needed {own2:.1f} CPU-s; on {d.get('cores', '?')} "
                       f"cores that is at least {own2 / d.get('cores', 1):.1f} s of wall time, so no configuration "
                       f"could beat {ceiling:.2f}x over the one-worker run's {one['wall_s']:.1f} s here "
                       f"(PostgreSQL, Redis and the S3 endpoint not even counted).")
        why.append(f"Per image, the pipeline call took {one.get('s_per_image_in_pipeline', 0):.2f} s with one worker "
                   f"and {two.get('s_per_image_in_pipeline', 0):.2f} s with two (contention for the same cores).")
        why.append("One worker: " + _cpu_sentence(c1) + " Two workers: " + _cpu_sentence(c2))
        shared = _shared(c1) or _shared(c2)
        if shared:
            why.append(shared.replace("this measurement", "the measurements") + " Both throughputs, and the ratio, "
                                                                                 "move with that load.")
    if tier:
        why.append(f"The diffusion workers on their own, with nothing else running, scaled {tier['ratio']:.2f}x "
                   f"({tier['one_worker']['s_per_image_in_pipeline']:.2f} s → "
                   f"{tier['two_workers']['s_per_image_in_pipeline']:.2f} s per image in the pipeline with two "
                   f"processes on {d.get('cores', '?')} cores).")
    why.append(f"Images per worker with two workers: {two.get('images_per_worker', '?')}; batch sizes seen: "
               f"{two.get('batch_sizes', '?')}.")
    s.why = why
    s.close = ["diffusion has to be the scarce resource, as it is in production: one GPU per diffusion worker and CPU "
               "cores of their own for rendering, watermarking, the API and PostgreSQL (here a machine with at least "
               "two cores per diffusion worker plus cores for the other stages), or the same script on GPU hosts "
               "sharing the broker and the bucket",
               "on this machine, more cores or a heavier diffusion share of the work (larger images, more steps) "
               "would move the ratio towards 2x"]
    return s


def _cpu_ceiling(d: dict[str, Any]) -> float | None:
    """Best possible 2-worker speed-up given the CPU the bench's processes needed and the cores."""
    one, two = d.get("one_worker", {}), d.get("two_workers", {})
    c2 = two.get("cpu", {}).get("cpu_s")
    if not c2 or not one.get("wall_s") or not d.get("cores"):
        return None
    own2 = sum(x for k, x in c2.items() if "(all)" not in k)
    return min(2.0, one["wall_s"] / max(own2 / d["cores"], 1e-9))


def api_submit(r: dict[str, Any], charts: Path) -> Section:
    s = Section("api_submit", "API `POST /v1/jobs` at a fixed concurrency", goal=GOALS["api_submit.p99_ms"])
    a = r.get("api_submit")
    if not a:
        return s
    d = r.get("api_submit_detail", {})
    api, bare = d.get("api", {}), d.get("bare", {})
    procs = a.get("processes", 1)
    ratio = a.get("ratio") or (a["rps"] / a["bare_rps"] if a.get("bare_rps") else 0.0)
    s.value = f"{_f(a['rps'], 1)} req/s, p50 {_f(a['p50_ms'], 1)} ms, p99 {_f(a['p99_ms'], 1)} ms with {procs} API " \
              f"process(es): {ratio:.2f} of the bare route's {_f(a['bare_rps'], 1)} req/s (goal: at least " \
              f"{GOALS['api_submit.ratio'].target:g})"
    s.met = s.goal.met(a["p99_ms"]) and GOALS["api_submit.ratio"].met(ratio)  # type: ignore[union-attr]
    one = d.get("one_process", {})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names, vals_, colours = [f"API x{procs}", f"bare x{procs}"], [a["rps"], a["bare_rps"]], [BAR, BAR2]
    if one and procs > 1:
        names += ["API x1", "bare x1"]
        vals_ += [one["api"]["rps"], one["bare"]["rps"]]
        colours += [BAR3, BAR2]
    _bars(axes[0], names, vals_, colours, "{:.0f}")
    axes[0].set_ylabel("requests / s")
    axes[0].set_title(f"throughput, {api.get('connections', '?')} connections", fontsize=9)
    labels = ["API p50", "API p99", "bare p50", "bare p99"]
    vals = [a["p50_ms"], a["p99_ms"], bare.get("p50_ms", 0), bare.get("p99_ms", 0)]
    p99_met = GOALS["api_submit.p99_ms"].met(a["p99_ms"])
    _bars(axes[1], labels, vals, [BAR, BAR if p99_met else MISS, BAR2, BAR2], "{:.1f}")
    _goal_line(axes[1], GOALS["api_submit.p99_ms"], "goal: p99 under 50 ms")
    axes[1].set_ylim(0, max(*vals, GOALS["api_submit.p99_ms"].target) * 1.18)
    axes[1].set_ylabel("ms")
    axes[1].set_title(f"latency, {procs} process(es) each", fontsize=9)
    _save(fig, charts / "api_submit.png")
    s.chart = "api_submit.png"
    non2xx = a.get("non_2xx", api.get("non_2xx"))
    s.lines.append(f"{d.get('wrk', 'wrk')} against {d.get('server', 'the API')}; body: {d.get('body', '?')}; "
                   f"{d.get('limits', '')}. The bare FastAPI route (bench/bare_api.py, same uvicorn settings and "
                   f"process count) was measured in the same run with the same settings. Workers running: "
                   f"{d.get('workers_running', '?')} — {d.get('jobs_created', '?')} jobs were created and "
                   f"{d.get('start_messages_queued_in_redis', '?')} start messages were left queued, then the database "
                   f"was dropped. Non-2xx responses: API {non2xx}, bare {bare.get('non_2xx', '?')}; socket errors: "
                   f"{api.get('socket_errors', '?')}.")
    if one and procs > 1:
        s.lines.append(f"One process each: API {one['api']['rps']:.0f} req/s (p99 {one['api']['p99_ms']:.0f} ms), bare "
                       f"{one['bare']['rps']:.0f} req/s — {one.get('ratio') or 0:.2f}.")
    if s.met:
        return s
    c = api.get("connections", 16)
    why = [f"At {c} connections a closed loop's mean latency is connections / throughput (Little's law): "
           f"{c} / {a['rps']:.0f} req/s = {1000 * c / a['rps']:.0f} ms (measured mean {_f(api.get('mean_ms'), 1)} ms). "
           f"A p99 under 50 ms at {c} connections needs more than {c / 0.05:.0f} req/s even with no variance at all."]
    single = one.get("api", api) if one else api
    if single.get("server_cpu_ms_per_request") is not None:
        pg = single.get("postgres", {})
        why.append(f"In one process each submission cost the API {single['server_cpu_ms_per_request']:.2f} ms of CPU "
                   f"(the bare route {one.get('bare', bare).get('server_cpu_ms_per_request', 0):.2f} ms) plus at least "
                   f"{pg.get('backend_cpu_ms_per_request', 0):.2f} ms in PostgreSQL backends. With {procs} process(es) "
                   f"the machine's cores were {api.get('machine_utilisation', 0):.0%} busy: the API, PostgreSQL, Redis "
                   f"and wrk share {d.get('machine', {}).get('cpus', '?')} cores.")
        sv = d.get("service_cpu_ms_per_submission")
        if sv:
            rest = single["server_cpu_ms_per_request"] - sv["total"]
            why.append(f"Measured in-process (no HTTP), the route's service calls cost {sv['total']:.2f} ms of CPU per "
                       f"submission: key lookup {sv['key_lookup']:.2f}, body validation {sv['validation']:.2f}, "
                       f"`submit_job` {sv['submit_job']:.2f} (the broker message alone "
                       f"{sv['broker_message_alone']:.2f}); the other {rest:.2f} ms of the API process's CPU per request "
                       f"go to the HTTP server, FastAPI's dependencies and thread-pool hops, the rate limit and quota "
                       f"checks, response serialisation and the middleware.")
        if pg.get("backends_started"):
            why.append(f"The API's SQLAlchemy pool keeps 20 PostgreSQL connections (10 more overflow ones are opened "
                       f"and closed on demand): at {c} concurrent requests at least {pg['backends_started']} new "
                       f"connections — each a forked PostgreSQL backend — were opened during the run.")
        why.append(f"The bare route needs {one.get('bare', bare).get('server_cpu_ms_per_request', 0):.2f} ms per "
                   f"request and no database: {GOALS['api_submit.ratio'].target:g} of its rate leaves about "
                   f"{1 / GOALS['api_submit.ratio'].target * one.get('bare', bare).get('server_cpu_ms_per_request', 0):.1f}"
                   f" ms of CPU per submission for everything — HTTP, validation, the key lookup, the quota sum, two "
                   f"INSERTs and a commit in PostgreSQL, and the broker message.")
    m = d.get("machine", {})
    if m.get("load_avg_1m") and m.get("cpus") and m["load_avg_1m"] > m["cpus"]:
        why.append(f"The machine was shared: its load average was {m['load_avg_1m']} on {m['cpus']} cores when the "
                   f"run started, so the API got less than the cores' time.")
    un = d.get("unloaded", {}).get("api")
    if un:
        why.append(f"Unloaded (1 connection, 1 process) the API answered at p50 {un['p50_ms']:.1f} ms and p99 "
                   f"{un['p99_ms']:.1f} ms ({un['rps']:.0f} req/s); the bare route at p50 "
                   f"{d['unloaded'].get('bare', {}).get('p50_ms', 0):.2f} ms.")
    at_pool = d.get("api_at_pool_size")
    if at_pool:
        why.append(f"At {at_pool['connections']} connections (the pool size, one process) it served "
                   f"{at_pool['rps']:.0f} req/s at p99 {at_pool['p99_ms']:.1f} ms and opened "
                   f"{at_pool.get('postgres', {}).get('backends_started', '?')} new connections.")
    s.why = why
    cpu_ms = (single.get("server_cpu_ms_per_request") or 0) + (single.get("postgres", {})
                                                                .get("backend_cpu_ms_per_request") or 0)
    s.close = [f"cores: {c / 0.05:.0f} req/s at about {cpu_ms:.1f} ms of CPU each (API + PostgreSQL) is "
               f"{c / 0.05 * cpu_ms / 1000:.1f} cores for the API and PostgreSQL alone — API processes (uvicorn "
               f"workers or replicas) on cores of their own, with PostgreSQL on its own host",
               "a batched submit path: one INSERT and one commit for the jobs of several concurrent requests, and "
               "one pipelined broker round trip for their start messages"]
    return s


def batch_speedup(r: dict[str, Any], charts: Path) -> Section:
    s = Section("batch_speedup", "Batching speed-up (diffusion worker)")
    v = r.get("batch_speedup")
    if v is None:
        return s
    d = r.get("batch_speedup_detail", {})
    s.value = f"{v:.3f}x"
    fig, ax = plt.subplots(figsize=(5, 3.4))
    _bars(ax, ["batch 1", "batch 4"], [d.get("images_per_s_batch1", 0), d.get("images_per_s_batch4", 0)],
          [BAR2, BAR], "{:.3f}")
    ax.set_ylabel("images / s")
    ax.set_title(f"batch 4 over batch 1: {v:.3f}x ({d.get('device', 'cpu')}, {d.get('torch_threads', '?')} thread)",
                 fontsize=9)
    _save(fig, charts / "batch_speedup.png")
    s.chart = "batch_speedup.png"
    s.lines.append(f"Images/s of {d.get('model', 'sdxl-bench')} at {d.get('size', '?')} px, {d.get('steps', '?')} "
                   f"steps, one pipeline call of 4 images over one call of 1, {d.get('torch_threads', '?')} torch "
                   f"thread. On a CPU the denoiser's arithmetic is already the bottleneck at batch 1, so batching gains "
                   f"little; on a GPU a batch fills the device.")
    return s


def svdquant(r: dict[str, Any], charts: Path) -> Section:
    s = Section("svdquant", "SVDQuant error and memory ratios")
    err, mem = r.get("svdquant_error_ratio"), r.get("svdquant_memory_ratio")
    if err is None and mem is None:
        return s
    ed, md = r.get("svdquant_error_detail", {}), r.get("svdquant_memory_detail", {})
    s.value = f"error ratio {_f(err, 3)}, memory ratio {_f(mem, 3)}x"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [("svdquant_vs_naive_w4a4", "vs naive\nW4A4"), ("svdquant_vs_smoothquant_w4a4", "vs SmoothQuant\nW4A4"),
             ("weight_lowrank_vs_int4", "low-rank weight\nvs INT4")]
    present = [(label, ed[k]) for k, label in names if k in ed] or [("vs naive\nW4A4", err or 0.0)]
    _bars(axes[0], [p[0] for p in present], [p[1] for p in present], BAR, "{:.3f}")
    axes[0].axhline(1.0, color="#777777", linestyle=":", linewidth=1, label="1.0 = no better")
    axes[0].legend(fontsize=8)
    axes[0].set_ylabel("output error ratio (lower is better)")
    axes[0].set_ylim(0, max(1.1, *(p[1] for p in present)) * 1.1)
    axes[0].set_title(f"worst of {ed.get('seeds', '?')} seeds, {ed.get('layer', '')}", fontsize=8)
    if md:
        _bars(axes[1], ["bf16", "SVDQuant"], [md["bf16_bytes"] / 2**20, md["svdquant_bytes"] / 2**20], [BAR2, BAR],
              "{:.1f} MiB")
        axes[1].set_ylabel("MiB")
        axes[1].set_title(f"{md.get('layer', '')} layer, rank {md.get('rank', '?')}: {mem:.2f}x smaller", fontsize=9)
    _save(fig, charts / "svdquant.png")
    s.chart = "svdquant.png"
    s.lines.append("Error: W4A4 output error of SVDQuant (smoothing + rank-32 16-bit branch + 4-bit residual) divided by "
                   "that of naive W4A4 on a linear layer with outlier channels. Memory: bf16 bytes over SVDQuant's "
                   "packed INT4 weights, scales, smoothing factors and low-rank branch, for a FLUX-sized layer.")
    return s


def watermark(r: dict[str, Any], charts: Path) -> Section:
    s = Section("watermark", "Watermark robustness per attack")
    w = r.get("watermark")
    if not w:
        return s
    attacks = w.get("attacks", {})
    worst = min(attacks.items(), key=lambda kv: kv[1]["tpr_at_1pct_fpr"]) if attacks else None
    s.value = (f"{len(attacks)} attacks; lowest TPR@1% FPR {worst[1]['tpr_at_1pct_fpr']:.3f} ({worst[0]})"
               if worst else "no attacks")
    names = list(attacks)
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.6))
    y = range(len(names))
    metrics = [("bit_accuracy", "bit accuracy", BAR2), ("tpr_at_1pct_fpr", "TPR @ 1% FPR", BAR),
               ("payload_recovered", "payload decoded (blind)", BAR3)]
    h = 0.27
    for i, (k, label, c) in enumerate(metrics):
        ax.barh([yy + (i - 1) * h for yy in y], [attacks[n].get(k, 0) for n in names], height=h, color=c, label=label)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.5 / len(names) - 0.02), ncol=3)
    ax.set_title(f"{w.get('method', '')}: {w.get('images', '?')} marked, {w.get('unmarked_images', '?')} unmarked "
                 f"{w.get('size', '?')} px images, PSNR {w.get('psnr_db', '?')} dB", fontsize=9)
    _save(fig, charts / "watermark.png")
    s.chart = "watermark.png"
    fpr = w.get("empirical_fpr", {})
    s.lines.append(f"{w.get('payload_bits', '?')}-bit payload in a {w.get('codeword_bits', '?')}-bit codeword; decision "
                   f"thresholds {w.get('thresholds_bits', {})} bits; empirical false positives on unmarked images: "
                   f"{fpr}. Measured {w.get('measured_at', '?')} ({w.get('machine', '?')}).")
    return s


def fleet_scale(r: dict[str, Any], charts: Path) -> Section:
    """The control plane at fleet scale (bench/scale.json, ``make scale``), when that file exists."""
    s = Section("scale", "Fleet scale: simulated GPUs fed by one control plane")
    d = r.get("scale")
    if not d or not d.get("fleet"):
        return s  # not measured: `make scale` writes bench/scale.json
    fleet = sorted(d["fleet"], key=lambda f: f["gpus"])
    by = {f["gpus"]: f for f in fleet}
    sizes = [str(f["gpus"]) for f in fleet]
    busy = [f["slot_busy_fraction"] for f in fleet]
    ceiling = d.get("ceiling") or {}
    s.value = "slot busy " + ", ".join(f"{b:.2f}" for b in busy) + f" at {'/'.join(sizes)} GPUs; ceiling: " + (
        f"{ceiling['gpus']} GPUs" if ceiling.get("gpus") else "not reached")
    s.goal = Goal(">=", 0.95, "busy ≥ 0.95 at 32 GPUs and ≥ 0.9 at 128; hand-off p50 ≤ 5 ms, p95 ≤ 15 ms at 8")
    checks: list[tuple[str, bool | None]] = [
        ("busy ≥ 0.95 at 32", by[32]["slot_busy_fraction"] >= 0.95 if 32 in by else None),
        ("busy ≥ 0.9 at 128", by[128]["slot_busy_fraction"] >= 0.9 if 128 in by else None)]
    h8 = by.get(8, {}).get("handoff_ms") or {}
    if h8.get("p50") is not None:
        checks += [("hand-off p50 ≤ 5 ms at 8", h8["p50"] <= 5.0), ("hand-off p95 ≤ 15 ms at 8", h8["p95"] <= 15.0)]
    known = [ok for _, ok in checks if ok is not None]
    s.met = all(known) if known else None

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    _bars(ax, sizes, busy, [BAR if b >= 0.9 else MISS for b in busy])
    ax.set_ylim(0, 1.15)
    ax.axhline(0.95, color=GOAL_COLOUR, linestyle="--", linewidth=1.2, label="goal at 32: 0.95")
    ax.axhline(0.9, color=GOAL_COLOUR, linestyle=":", linewidth=1.2, label="goal at 128 / ceiling: 0.9")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_xlabel("simulated GPUs")
    ax.set_title("GPU-slot busy fraction (device time / wall)")
    ax = axes[0][1]
    jph = [f["jobs_per_hour"] for f in fleet]
    per_gpu = jph[0] / fleet[0]["gpus"] if jph and fleet[0]["gpus"] else 0.0
    ax.plot(sizes, jph, marker="o", color=BAR, label="measured")
    ax.plot(sizes, [per_gpu * f["gpus"] for f in fleet], linestyle="--", color=BAR2,
            label=f"linear from {fleet[0]['gpus']} GPU")
    ax.set_yscale("log")
    ax.set_xlabel("simulated GPUs")
    ax.set_title("jobs per hour")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    width = 0.27
    xs = list(range(len(fleet)))
    for k, (q, colour) in enumerate((("p50", BAR), ("p95", BAR2), ("p99", BAR3))):
        vals = [(f["handoff_ms"].get(q) or 0.0) for f in fleet]
        ax.bar([x + (k - 1) * width for x in xs], vals, width, color=colour, label=q)
    ax.axhline(5.0, color=GOAL_COLOUR, linestyle="--", linewidth=1.0, label="goal p50 5 ms")
    ax.axhline(15.0, color=GOAL_COLOUR, linestyle=":", linewidth=1.0, label="goal p95 15 ms")
    ax.set_yscale("log")
    ax.set_xticks(xs, sizes)
    ax.set_xlabel("simulated GPUs")
    ax.set_ylabel("ms")
    ax.set_title("stage hand-off (items that found a free slot)")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    metrics = (("orchestrator_cpu_ms_per_stage", "orchestrator CPU ms"), ("db_tx_per_stage", "PostgreSQL tx"),
               ("redis_ops_per_stage", "Redis commands / 10"))
    for k, (key, label) in enumerate(metrics):
        vals = [f[key] / (10.0 if key.startswith("redis") else 1.0) for f in fleet]
        ax.bar([x + (k - 1) * width for x in xs], vals, width, color=(BAR, BAR2, BAR3)[k], label=label)
    ax.set_xticks(xs, sizes)
    ax.set_xlabel("simulated GPUs")
    ax.set_title("control-plane cost per stage")
    ax.legend(fontsize=8)
    _save(fig, charts / "scale.png")
    s.chart = "scale.png"

    w = d.get("workload", {})
    s.lines.append(f"`make scale` (bench/scale.py, bench/simfleet.py): {w.get('simulated', '')}. Jobs: "
                   f"{w.get('jobs', '')}; {w.get('jobs_in_flight', '')}. Each size: {w.get('warmup_s', '?')} s of the "
                   f"stream, then {w.get('window_s', '?')} s measured; device times at {w.get('time_scale', 1)}x "
                   f"the real cards'. Processes: {w.get('processes', '')}.")
    rows = ["| GPUs | jobs/h | slot busy | hand-off p50 / p95 / p99 ms (n) | slot gap p50 / p95 ms | "
            "orchestrator CPU ms / stage | PG tx / stage | Redis cmds / stage | orchestrator cores | "
            "machine busy | GPU queue empty |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in fleet:
        h, g = f["handoff_ms"], f.get("slot_gap_ms") or {}
        orchestrators = f.get("orchestrators", 1)
        gpus = f"{f['gpus']}" + (f" ({orchestrators} orchestrators)" if orchestrators > 1 else "")
        rows.append(f"| {gpus} | {_f(f['jobs_per_hour'], 0)} | {f['slot_busy_fraction']:.3f} | "
                    f"{_f(h.get('p50'), 1)} / {_f(h.get('p95'), 1)} / {_f(h.get('p99'), 1)} ({h.get('n', 0)}) | "
                    f"{_f(g.get('p50'), 1)} / {_f(g.get('p95'), 1)} | {_f(f['orchestrator_cpu_ms_per_stage'], 1)} | "
                    f"{_f(f['db_tx_per_stage'], 1)} | {_f(f['redis_ops_per_stage'], 1)} | "
                    f"{_f(f['cpu_cores'].get('orchestrator'), 2)} | {f['machine_utilisation']:.0%} | "
                    f"{_f(f.get('gpu_queue_empty_fraction'), 2)} |")
    s.lines.append("\n".join(rows))
    s.lines.append("Slot busy: device time slept inside the window / (GPUs x window). Hand-off: from the end of a stage "
                   "item's last dependency to its start on a worker, for items that found a free slot in their pool "
                   "the whole time (queueing behind a busy fleet excluded; `handoff_detail` in scale.json splits it "
                   "into the orchestrator's part and the broker + worker part, per pool). Slot gap: a GPU slot's idle "
                   "time between two tasks' device times. Per-stage costs divide each counter's delta over the "
                   "window by the stage items workers finished in it; PostgreSQL's are `pg_stat_database` "
                   "commits + rollbacks of the stack's own database, Redis's `INFO commandstats` of a redis-server "
                   "of the bench's own, both less the bench's own probes.")
    ceiling_line = (f"**Ceiling:** {ceiling['gpus']} GPUs (busy {ceiling['slot_busy_fraction']:.2f} < "
                    f"{ceiling.get('threshold', 0.9)}): {ceiling['resource']}." if ceiling.get("gpus")
                    else f"**Ceiling:** {ceiling.get('resource', 'not measured')}.")
    s.lines.append(ceiling_line)
    outside = [f["cpu_cores"].get("outside the stack", 0.0) for f in fleet]
    if max(outside, default=0.0) > 0.25:
        s.lines.append("The machine was shared: processes outside the stack used up to "
                       f"{max(outside):.2f} cores during these windows, which the control plane could not have.")
    if s.met is False:
        s.why = [f"{name}: {'met' if ok else 'missed'}." for name, ok in checks if ok is not None]
        if ceiling.get("gpus"):
            s.why.append(f"At {ceiling['gpus']} GPUs the first resource to saturate was {ceiling['resource']}.")
        orch = [f["orchestrator_cpu_ms_per_stage"] for f in fleet]
        s.why.append(f"The orchestrator spends {min(orch):.1f}–{max(orch):.1f} ms of CPU per stage item (one "
                     "process, GIL-bound): one core feeds at most "
                     f"{1000 / max(min(orch), 1e-9):.0f} stage items per second.")
        s.close = ["cut the orchestrator's CPU per stage further (its events already go in with one INSERT per "
                   "transaction; next: plain-tuple reads of a job's stage rows instead of ORM objects, stage progress "
                   "through Redis instead of a transaction on the job's row, a leaner broker consumer)",
                   "run several orchestrator consumers (job-sharded) on cores of their own, so transitions use more "
                   "than one core",
                   "for the hand-off: two broker hops at their floor leave under 2 ms for the transaction and the "
                   "claim; reaching 5 ms takes fewer hops (a worker that records its own result and queues the next "
                   "item), not more trimming",
                   "see docs/scaling.md for the projection and what to change beyond it"]
    return s


FIGURES: list[Callable[[dict[str, Any], Path], Section]] = [stage_handoff, overhead, worker_busy, scaleout, api_submit,
                                                            batch_speedup, svdquant, watermark, fleet_scale]


# ---------------------------------------------------------------- the document

def _machine_lines(r: dict[str, Any]) -> list[str]:
    rows = []
    sources = [("stage hand-off, overhead ratio (bench/run.py)", r.get("machine"), r.get("measured_at")),
               ("scale-out (bench/scaleout.py)", r.get("scaleout_detail", {}).get("machine"), None),
               ("API submit (bench/api_bench.py)", r.get("api_submit_detail", {}).get("machine"), None)]
    for name, m, when in sources:
        if not isinstance(m, dict):
            continue
        rows.append(f"| {name} | {m.get('cpus', '?')} | {m.get('cpu_model', '?')} | "
                    f"{m.get('torch', '?')}, {m.get('torch_threads_default', '?')} threads by default | "
                    f"{m.get('load_avg_1m', '?')} | {m.get('date') or when or '?'} |")
    if r.get("gpu_bench_measured_at"):
        rows.append(f"| batching, SVDQuant, busy fraction (bench/gpu_bench.py cpu) | {r.get('machine', {}).get('cpus', '?')} "
                    f"| — | batch: {r.get('batch_speedup_detail', {}).get('torch_threads', '?')} torch thread | — | "
                    f"{r['gpu_bench_measured_at']} |")
    w = r.get("watermark")
    if isinstance(w, dict):
        rows.append(f"| watermark (bench/watermark_bench.py) | {w.get('machine', '?')} | — | — | — | "
                    f"{w.get('measured_at', '?')} |")
    if not rows:
        return []
    return ["| figures | cores | CPU | torch | load avg (1 min) at start | measured |", "|---|---|---|---|---|---|", *rows]


def render(results: dict[str, Any], report: Path, charts: Path) -> list[Section]:
    """Write the charts into ``charts`` and the Markdown report to ``report``; return the sections."""
    charts.mkdir(parents=True, exist_ok=True)
    sections = [fig(results, charts) for fig in FIGURES]
    rel = Path(os.path.relpath(charts, report.parent))
    m = results.get("machine", {})
    out = ["# Atelier benchmark report", "",
           f"Rendered by `bench/report.py` from `bench/results.json` on "
           f"{datetime.now(UTC).isoformat(timespec='seconds')}; `make bench` measures and renders it. Benchmarks are "
           f"not tests: nothing here is asserted.", ""]
    if m:
        vm = " virtual (a hypervisor's vCPUs)" if m.get("virtual_cpus") else ""
        out += [f"**Machine:** {m.get('cpus', '?')}{vm} cores ({m.get('cpu_model', 'CPU model not recorded')}), "
                f"{m.get('device', 'cpu')}, torch {m.get('torch', '?')} with "
                f"{m.get('torch_threads_default', '?')} threads by default; no GPU. The figures below come from "
                f"these runs:", ""]
    out += _machine_lines(results) + [""]
    out += ["## Summary", "", "| figure | value | goal | met |", "|---|---|---|---|"]
    for s in sections:
        goal = s.goal.text if s.goal else "—"
        met = "—" if s.met is None else ("yes" if s.met else "**no**")
        out.append(f"| [{s.title}](#{_anchor(s.title)}) | {s.value} | {goal} | {met} |")
    out.append("")
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.chart:
            out += [f"![{s.title}]({(rel / s.chart).as_posix()})", ""]
        out += [f"**Figure:** {s.value}" + (f" — goal {s.goal.text}" if s.goal else "") +
                ("" if s.met is None else (" (met)." if s.met else " (**missed**).")), ""]
        for line in s.lines:
            out += [line, ""]
        if s.met is False:
            out += ["**Why the goal is missed.** " + " ".join(s.why or ["no detail was recorded for this figure."]), ""]
            close = "; ".join(s.close or ["—"])
            out += ["**What would close it.** " + close[:1].upper() + close[1:] + ".", ""]
    report.write_text("\n".join(out).rstrip() + "\n")
    return sections


def _anchor(title: str) -> str:
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return keep.strip().replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=HERE / "results.json")
    ap.add_argument("--out", type=Path, default=HERE / "REPORT.md")
    ap.add_argument("--charts", type=Path, default=HERE / "report")
    ap.add_argument("--scale", type=Path, default=HERE / "scale.json", help="`make scale`'s figures, when present")
    args = ap.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results} does not exist: run `make bench` first", file=sys.stderr)
        return 2
    results = json.loads(args.results.read_text())
    if args.scale.exists():
        results["scale"] = json.loads(args.scale.read_text())
    sections = render(results, args.out, args.charts)
    missed = [s.title for s in sections if s.met is False]
    print(f"wrote {args.out} and {sum(1 for s in sections if s.chart)} charts in {args.charts}; "
          f"goals missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
