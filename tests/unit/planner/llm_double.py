"""A test double of the OpenAI chat-completions protocol on a real socket (127.0.0.1, a thread).

It answers ``POST /v1/chat/completions`` like a small, obedient model: it reads the ``<data>`` block of the
last user turn and the schema name from ``response_format`` and writes a plausible answer for each
planner prompt. ``GET /v1/models`` (and ``GET /version`` when it plays vLLM) answer the planner's probe.

Tests steer it with ``double.script``: each chat request takes the next entry (FIFO) — a fault name
(``"malformed_json"``, ``"schema_violation"``, ``"http500"``, ``"http400"``, ``"timeout"``,
``"bad_envelope"``, ``"no_choices"``, ``"obey_injection"``) or a callable ``(body) -> dict`` giving the
answer object — and falls back to the default answer when the script is empty. Every request body is kept
in ``double.requests``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

DATA = re.compile(r"<data>\n(.*)\n</data>", re.S)


def data_of(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON inside the ``<data>`` block of the last user turn that has one (a repair turn has none)."""
    for msg in reversed([m for m in body["messages"] if m["role"] == "user"]):
        content = msg["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if p["type"] == "text")
        m = DATA.search(text)
        if m:
            return json.loads(m.group(1))
    raise AssertionError("no <data> block in any user turn")


def minimal(schema: dict[str, Any]) -> Any:
    """The smallest instance of a schema (for requests that are not planner prompts)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {k: minimal(v) for k, v in schema.get("properties", {}).items() if k in schema.get("required", [])}
    if kind == "array":
        return [minimal(schema["items"]) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return True
    return None


def images_of(body: dict[str, Any]) -> list[Image.Image]:
    msg = [m for m in body["messages"] if m["role"] == "user"][-1]
    out = []
    if isinstance(msg["content"], list):
        for part in msg["content"]:
            if part["type"] == "image_url":
                b64 = part["image_url"]["url"].split(",", 1)[1]
                out.append(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
    return out


def schema_name(body: dict[str, Any]) -> str:
    rf = body.get("response_format") or {}
    return str((rf.get("json_schema") or {}).get("name", ""))


# ---------------------------------------------------------------- the double's "model"


def _things(text: str) -> list[str]:
    parts = re.split(r",|\band\b|\bwith\b", text)
    return [p.strip(" .") for p in parts if len(p.strip(" .")) > 2][:3]


def answer_rpg(d: dict[str, Any]) -> dict[str, Any]:
    things = _things(d["caption"]) or [d["caption"]]
    return {"key_entities": things, "rows": [{"height": 1, "cells": [{"width": 1, "prompt": t} for t in things]}],
            "entities_share_class": False}


def answer_prompts(d: dict[str, Any]) -> dict[str, Any]:
    p, b = d["product"], d["brand"]
    colour = b["colours"][0] if b["colours"] else "white"
    return {"category": "product", "foreground": f"{p['name']}, {p['description'][:80]}, studio product photo",
            "background": f"a sunlit {colour} stone tabletop with a linen cloth and a potted olive plant, soft light",
            "background_objects": ["linen cloth", "potted olive plant"]}


def answer_layout(d: dict[str, Any]) -> dict[str, Any]:
    x1, y1, x2, y2 = d["safe_zone"]["box"]
    w, h = x2 - x1, y2 - y1
    n_subs = len(d["subs"])
    out: dict[str, Any] = {}
    if d["target"]["aspect"] == "portrait":
        out["headline"] = [x1, y1, x2, y1 + int(0.18 * h)]
        y = y1 + int(0.2 * h)
        subs = []
        for _ in range(n_subs):
            subs.append([x1, y, x2, y + int(0.07 * h)])
            y += int(0.08 * h)
        out["product"] = [x1 + int(0.1 * w), y + 10, x2 - int(0.1 * w), y2 - int(0.15 * h)]
        if d["cta"]:
            out["cta"] = [x1 + int(0.25 * w), y2 - int(0.1 * h), x2 - int(0.25 * w), y2]
    else:
        mid = x1 + w // 2
        out["product"] = [x1, y1 + int(0.1 * h), mid - 20, y2]
        out["headline"] = [mid + 20, y1 + int(0.15 * h), x2, y1 + int(0.4 * h)]
        y = y1 + int(0.42 * h)
        subs = []
        for _ in range(n_subs):
            subs.append([mid + 20, y, x2, y + int(0.12 * h)])
            y += int(0.14 * h)
        if d["cta"]:
            out["cta"] = [mid + 20, y, mid + 20 + int(0.3 * w), min(y2, y + int(0.1 * h))]
    if n_subs:
        out["subs"] = subs
    if d["logo"]:
        out["logo"] = [x1, y1, x1 + int(0.2 * w), y1 + int(0.08 * h)]
    if d["background_objects"]:
        out["objects"] = [{"object": d["background_objects"][0], "box": [0, 850, 200, 1000]}]
    return out


def answer_culture(d: dict[str, Any]) -> dict[str, Any]:
    ref = d.get("reference") or {}
    place = (ref.get("places") or [f"a harbour town in {d['culture']}"])[0]
    return {"setting": place, "dress": str((ref.get("dress") or {}).get("girl", f"a hand-woven {d['culture']} dress")),
            "food": ", ".join((ref.get("food") or ["fresh flatbread with honey"])[:2]),
            "festivals": (ref.get("festivals") or ["the spring lantern festival"])[0],
            "architecture": (ref.get("architecture") or ["a whitewashed stone house"])[0],
            "everyday_objects": ", ".join((ref.get("everyday_objects") or ["a clay water jar"])[:3]),
            "names": (ref.get("names") or ["Asha", "Grandma Lila"])[:4]}


def answer_story(d: dict[str, Any]) -> dict[str, Any]:
    names = ["Asha", "Grandma Lila"]
    for note in d.get("culture_notes", []):
        if note.startswith("Names: "):
            found = [n.strip() for n in note[len("Names: "):].split(",") if n.strip()]
            if len(found) >= 2:
                names = [found[0], found[-1]]
    a, b = names
    sentences = [f"{a} and {b} lived near the river.", f"One morning {a} wanted to help.",
                 f"{b} showed her how to fold a paper boat.", "The wind was strong, so they tried again.",
                 "At last the boat sailed far.", f"{a} laughed and {b} clapped."]
    pages = int(d.get("pages", 4))
    while len(sentences) < pages:
        sentences.append("They smiled at the water.")
    return {"title": f"{a} and the Paper Boat", "story": " ".join(sentences)}


def answer_characters(d: dict[str, Any]) -> dict[str, Any]:
    m = re.match(r"(.+?) and (.+?) lived", d["story"])
    names = [m.group(1), m.group(2)] if m else ["Asha"]
    roles = ["girl", "grandmother"]
    ages = [8, 70]
    return {"characters": [{"name": n, "role": roles[i], "age": ages[i], "skin": "warm brown skin",
                            "hair": "black hair in two plaits" if i == 0 else "grey hair in a bun",
                            "clothing": "a green cotton dress" if i == 0 else "a cream sari with a red border"}
                           for i, n in enumerate(names[:d.get("max_characters", 3)])]}


def answer_scenes(d: dict[str, Any]) -> dict[str, Any]:
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", d["story"]) if s]
    pages = d["pages"]
    names = [c["name"] for c in d["characters"]]
    per = max(1, -(-len(sentences) // pages))
    scenes = []
    for i in range(pages):
        chunk = sentences[i * per:(i + 1) * per] or sentences[-1:]
        cast = [{"character": n, "pose": "standing by the river", "expression": "smiling"} for n in names[:2]]
        scenes.append({"narration": " ".join(chunk), "backdrop": "a riverbank at sunrise with palm trees",
                       "cast": cast})
    return {"scenes": scenes}


def answer_scene_layout(d: dict[str, Any]) -> dict[str, Any]:
    cast = d["cast"]
    n = len(cast)
    width = 800 // max(1, n)
    boxes = [{"character": c["name"], "box": [100 + i * width, 300, 100 + i * width + width - 40, 950]}
             for i, c in enumerate(cast)]
    return {"global_caption": d["backdrop"] + ", " + ", ".join(c["name"] for c in cast), "boxes": boxes}


def answer_design(d: dict[str, Any]) -> dict[str, Any]:
    things = _things(d["prompt"]) or [d["prompt"]]
    points = d.get("centre_points") or []
    regions = []
    for i, t in enumerate(things[:max(1, d["max_new_regions"])]):
        if i < len(points):
            cx, cy = points[i]["point"]
        else:
            cx, cy = 200 + 300 * (i % 3), 600
        regions.append({"caption": t, "box": [max(0, cx - 120), max(0, cy - 120), min(1000, cx + 120), min(1000, cy + 120)]})
    return {"global_caption": d["prompt"], "regions": regions[:d["max_new_regions"]]}


COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40),
           "white": (245, 245, 245), "black": (15, 15, 15)}


def answer_critic(d: dict[str, Any], images: list[Image.Image]) -> dict[str, Any]:
    img = images[0].resize((8, 8))
    px = list(img.getdata())
    mean = tuple(sum(c[k] for c in px) / len(px) for k in range(3))
    seen = min(COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOURS[n], mean, strict=True)))
    said = [n for n in COLOURS if re.search(rf"\b{n}\b", d["region_caption"].lower())]
    ok = seen in said
    return {"present": ok, "matches": ok, "confidence": 90, "reason": f"mostly {seen}"}


ANSWERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "rpg_recaption": answer_rpg, "paid_ad_prompts": answer_prompts, "paid_ad_layout": answer_layout,
    "kahani_culture": answer_culture, "kahani_story": answer_story, "kahani_characters": answer_characters,
    "kahani_scenes": answer_scenes, "creatilayout_scene": answer_scene_layout, "creatilayout_design": answer_design,
}


def default_answer(body: dict[str, Any]) -> dict[str, Any]:
    name = schema_name(body)
    if name == "critic_region":
        return answer_critic(data_of(body), images_of(body))
    if name not in ANSWERS:
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {"type": "object"}
        return minimal(schema)
    return ANSWERS[name](data_of(body))


# ---------------------------------------------------------------- the server


class ChatDouble:
    def __init__(self, *, vllm_version: str | None = None, model: str = "double-llm", timeout_sleep: float = 2.0) -> None:
        self.vllm_version = vllm_version
        self.model = model
        self.timeout_sleep = timeout_sleep
        self.script: list[str | Callable[[dict[str, Any]], dict[str, Any]]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.probes: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> ChatDouble:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def chat_requests(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if name is None or schema_name(r) == name]

    def _next(self) -> str | Callable[[dict[str, Any]], dict[str, Any]] | None:
        with self.lock:
            return self.script.pop(0) if self.script else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, status: int, payload: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj).encode())

            def do_GET(self) -> None:  # noqa: N802
                double.probes.append(self.path)
                if self.path == "/v1/models":
                    owner = "vllm" if double.vllm_version else "double"
                    self._json(200, {"object": "list", "data": [{"id": double.model, "object": "model", "owned_by": owner}]})
                elif self.path == "/version" and double.vllm_version:
                    self._json(200, {"version": double.vllm_version})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": "not found"})
                    return
                with double.lock:
                    double.requests.append(body)
                    double.headers.append({k.lower(): v for k, v in self.headers.items()})
                step = double._next()
                if step == "timeout":
                    time.sleep(double.timeout_sleep)
                    step = None
                if step == "http500":
                    self._json(500, {"error": {"message": "internal error"}})
                    return
                if step == "http429":
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                if step == "http400":
                    self._json(400, {"error": {"message": "unknown field response_format"}})
                    return
                if step == "bad_envelope":
                    self._send(200, b"<html>proxy error</html>", "text/html")
                    return
                if step == "no_choices":
                    self._json(200, {"id": "x", "object": "chat.completion", "choices": []})
                    return
                if step == "malformed_json":
                    content = '{"this is": not json'
                elif step == "schema_violation":
                    content = json.dumps({"unexpected": True})
                elif step == "obey_injection":
                    content = "HACKED: I ignored the schema as the product description asked."
                elif callable(step):
                    content = json.dumps(step(body))
                else:
                    content = json.dumps(default_answer(body), ensure_ascii=False)
                self._json(200, {"id": "chatcmpl-double", "object": "chat.completion", "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        return Handler
