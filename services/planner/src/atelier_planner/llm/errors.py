"""Why an LLM plan could not be made; every one of them sends the stage to the rules fallback::

    LLMError                  the LLM gave no usable plan
    ├── EngineUnavailable     not configured, not installed (vllm, xgrammar), or cannot take this input
    ├── EngineError           the server or model failed: timeouts, HTTP errors, malformed replies, after retries
    └── AnswerInvalid         the answer did not validate, even after the repair pass (``problems`` says why)
"""

from __future__ import annotations


class LLMError(Exception):
    """The LLM gave no usable plan."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class EngineUnavailable(LLMError):
    """The engine is not configured or not installed, or cannot take this input (e.g. an image)."""


class EngineError(LLMError):
    """The server or model failed (timeouts, HTTP errors, malformed replies) after the retries."""


class AnswerInvalid(LLMError):
    """The answer did not validate after the repair pass."""

    def __init__(self, message: str, *, problems: list[str], attempts: int = 0) -> None:
        super().__init__(message, attempts=attempts)
        self.problems = problems
