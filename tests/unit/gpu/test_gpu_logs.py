"""The GPU package drops exactly the third-party import-time warnings that tell a user nothing (atelier_gpu.logs)."""

from __future__ import annotations

import logging

import pytest
from atelier_gpu import logs


@pytest.fixture()
def caught(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    logs.quiet_known_warnings()
    caplog.set_level(logging.WARNING)
    return caplog


def test_known_import_noise_is_dropped_and_the_rest_still_shows(caught: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_cuda", lambda: False)  # a CPU host
    so = "/venv/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so"
    logging.getLogger("torchao").warning(f"Failed to load {so}: Could not load this library: {so}")
    logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_cutlass_90a.abi3.so: nope")
    logging.getLogger("torchao.kernel.intmm").warning("Warning: Detected no triton, on systems without Triton ...")
    logging.getLogger("torch.utils._pytree").warning(
        "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an opaque")
    logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").warning(
        "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`")
    assert caught.records == []
    logging.getLogger("torchao").warning("quantize_: 3 layers skipped (shape not divisible by the group size)")
    logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").warning("something else")
    assert [r.getMessage() for r in caught.records] == [
        "quantize_: 3 layers skipped (shape not divisible by the group size)", "something else"]


def test_on_a_cuda_host_a_kernel_library_that_fails_to_load_is_reported(caught: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_cuda", lambda: True)
    logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_cutlass_90a.abi3.so: undefined symbol")
    assert [r.name for r in caught.records] == ["torchao"]
    logs.quiet_known_warnings()  # a second call adds no second filter
    assert sum(isinstance(f, logs._DropKnown) for f in logging.getLogger("torchao").filters) == 1
