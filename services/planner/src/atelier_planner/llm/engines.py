"""Engines: three ways to get one JSON answer constrained by a schema.

* :class:`OpenAIEngine` — any OpenAI-compatible server through :class:`~.client.ChatClient` (the VLM too);
* :class:`TransformersEngine` — a local model folder loaded in-process (``from_pretrained(...,
  local_files_only=True)``), decoding constrained token by token by xgrammar's grammar matcher;
* :class:`VLLMEngine` — ``vllm.LLM`` in-process with its structured-output decoding (an optional extra
  for GPU planner hosts; never installed on CPU machines).

Each engine is built once per worker process and is safe to share between threads.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .client import ChatClient
from .errors import EngineError, EngineUnavailable

log = logging.getLogger(__name__)


@dataclass
class JsonRequest:
    """Chat messages (OpenAI format; content may hold image parts) and the schema the answer must follow."""

    messages: list[dict[str, Any]]
    schema: dict[str, Any]
    name: str
    max_tokens: int | None = None


@dataclass
class Generated:
    text: str
    attempts: int = 1
    finish_reason: str | None = None


class Engine(Protocol):
    kind: str  # "openai" | "transformers" | "vllm"
    model: str
    supports_images: bool

    def generate(self, request: JsonRequest) -> Generated: ...


def has_images(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def text_only(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages with list contents joined to plain text (local chat templates take strings)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        out.append({"role": str(m["role"]), "content": str(content or "")})
    return out


class OpenAIEngine:
    """Chat completions on an OpenAI-compatible server (vLLM in production)."""

    kind = "openai"

    def __init__(self, client: ChatClient, *, supports_images: bool = False) -> None:
        self.client = client
        self.model = client.model
        self.supports_images = supports_images

    def generate(self, request: JsonRequest) -> Generated:
        if has_images(request.messages) and not self.supports_images:
            raise EngineUnavailable(f"{self.model} is not configured as a vision-language model")
        c = self.client.complete(request.messages, schema=request.schema, name=request.name,
                                 max_tokens=request.max_tokens)
        return Generated(text=c.text, attempts=c.attempts, finish_reason=c.finish_reason)


class TransformersEngine:
    """A local causal LM with xgrammar-constrained decoding (greedy unless ``temperature`` > 0)."""

    kind = "transformers"
    supports_images = False

    def __init__(self, model_dir: Path | str, *, device: str = "cpu", max_new_tokens: int = 1024,
                 temperature: float = 0.0, seed: int = 0, threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.threads = threads  # torch CPU threads while decoding (1 suits tiny models on a busy machine)
        self.model = self.model_dir.name
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any, Any] | None = None
        self._grammars: dict[str, Any] = {}

    def _load(self) -> tuple[Any, Any, Any, Any]:
        if self._loaded is not None:
            return self._loaded
        try:
            import xgrammar as xgr  # the optional transformers extra (heavy): loaded when this engine is built
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise EngineUnavailable("the transformers backend needs torch, transformers and xgrammar "
                                    "(pip install 'atelier-planner[transformers]')") from exc
        if not (self.model_dir / "config.json").is_file():
            raise EngineUnavailable(f"{self.model_dir} is not a model folder (no config.json); "
                                    "set ATELIER_TRANSFORMERS_MODEL_DIR to a local causal-LM folder")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, local_files_only=True, dtype="auto")
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(f"cannot load {self.model_dir}: {exc}") from exc
        model = model.to(self.device).eval()
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
        self._loaded = (tokenizer, model, xgr.GrammarCompiler(info), info)
        log.info("loaded %s on %s for constrained planning", self.model_dir, self.device)
        return self._loaded

    def _grammar(self, compiler: Any, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            # no free whitespace: a small model can otherwise spend its whole budget on spaces
            self._grammars[key] = compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    def _prompt_ids(self, tokenizer: Any, messages: list[dict[str, str]]) -> Any:
        if getattr(tokenizer, "chat_template", None):
            enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
            return enc["input_ids"]
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
        return tokenizer(text, return_tensors="pt")["input_ids"]

    def generate(self, request: JsonRequest) -> Generated:
        if has_images(request.messages):
            raise EngineUnavailable("the transformers backend reads no images (configure a VLM on the openai backend)")
        import torch  # heavy (torch): loaded on first use

        with self._lock:
            previous = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(self.threads)
            try:
                return self._decode(request)
            finally:
                torch.set_num_threads(previous)

    def _decode(self, request: JsonRequest) -> Generated:
        import torch  # the optional transformers extra (heavy): loaded when this engine is built
        import xgrammar as xgr

        tokenizer, model, compiler, info = self._load()
        matcher = xgr.GrammarMatcher(self._grammar(compiler, request.schema))
        bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
        ids = self._prompt_ids(tokenizer, text_only(request.messages)).to(self.device)
        budget = min(self.max_new_tokens, request.max_tokens or self.max_new_tokens)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        out: list[int] = []
        past = None
        step_ids = ids
        with torch.inference_mode():
            for _ in range(budget):
                o = model(input_ids=step_ids, past_key_values=past, use_cache=True)
                past = o.past_key_values
                logits = o.logits[:, -1, :].float().cpu()
                matcher.fill_next_token_bitmask(bitmask)
                xgr.apply_token_bitmask_inplace(logits, bitmask)
                if self.temperature > 0:
                    probs = torch.softmax(logits / self.temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=gen))
                else:
                    token = int(torch.argmax(logits, dim=-1))
                if not matcher.accept_token(token):
                    raise EngineError(f"xgrammar rejected token {token}")
                if matcher.is_terminated():
                    break
                out.append(token)
                step_ids = torch.tensor([[token]], device=self.device)
        if not matcher.is_terminated():
            raise EngineError(f"the answer did not close within {budget} new tokens")
        return Generated(text=tokenizer.decode(out, skip_special_tokens=True), finish_reason="stop")


class VLLMEngine:
    """``vllm.LLM`` in-process on a GPU planner host, decoding under vLLM's structured outputs."""

    kind = "vllm"
    supports_images = False

    def __init__(self, model_dir: Path | str, *, gpu_memory_utilization: float = 0.45, max_tokens: int = 2048,
                 temperature: float = 0.2, llm: Any = None) -> None:
        self.model_dir = Path(model_dir)
        self.model = self.model_dir.name
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._llm = llm
        self._lock = threading.Lock()

    @staticmethod
    def import_vllm() -> Any:
        try:
            import vllm  # the optional vllm extra: GPU planner hosts only
        except ImportError as exc:
            raise EngineUnavailable("vllm is not installed: it is an optional extra for GPU planner hosts "
                                    "(pip install 'atelier-planner[vllm]'); use the openai backend against "
                                    "`vllm serve` otherwise") from exc
        return vllm

    def _engine(self) -> Any:
        if self._llm is None:
            vllm = self.import_vllm()
            self._llm = vllm.LLM(model=str(self.model_dir), gpu_memory_utilization=self.gpu_memory_utilization)
        return self._llm

    def sampling_params(self, schema: dict[str, Any], max_tokens: int | None) -> Any:
        vllm = self.import_vllm()
        kwargs: dict[str, Any] = {"temperature": self.temperature, "max_tokens": max_tokens or self.max_tokens}
        try:  # vLLM >= 0.11
            from vllm.sampling_params import StructuredOutputsParams  # the optional vllm extra: GPU planner hosts only

            return vllm.SamplingParams(structured_outputs=StructuredOutputsParams(json=schema), **kwargs)
        except ImportError:  # older vLLM: guided decoding
            from vllm.sampling_params import GuidedDecodingParams  # the optional vllm extra: GPU planner hosts only

            return vllm.SamplingParams(guided_decoding=GuidedDecodingParams(json=schema), **kwargs)

    def generate(self, request: JsonRequest) -> Generated:
        if has_images(request.messages):
            raise EngineUnavailable("the in-process vllm backend is set up for text; use the openai backend for a VLM")
        params = self.sampling_params(request.schema, request.max_tokens)
        with self._lock:
            outputs = self._engine().chat(text_only(request.messages), sampling_params=params, use_tqdm=False)
        try:
            first = outputs[0].outputs[0]
        except (IndexError, AttributeError) as exc:
            raise EngineError("vllm returned no output") from exc
        return Generated(text=str(first.text), finish_reason=getattr(first, "finish_reason", None))
