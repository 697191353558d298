"""Numeric precision from the device's capabilities.

bf16 only where the GPU has it natively (compute capability 8.0+: A100, H100, H200, ...):
torch.cuda.is_bf16_supported() also says True on a V100, where bf16 is emulated and slow, so it
is asked with including_emulation=False. On GPUs without native bf16 (V100, P100, T4) training
uses fp16 mixed precision with dynamic loss scaling (fp32 master weights; the Trainer's GradScaler,
DeepSpeed's loss scaler under ZeRO), and inference (teacher caching, generation) runs in fp16. On
the CPU everything is fp32. `training.precision` in the config may ask for fp32 (or a type the
device has) instead of `auto`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MIN_FP16_CAPABILITY = (6, 0)  # Pascal: fp16 arithmetic; older GPUs compute in fp32


@dataclass(frozen=True)
class Device:
    """What precision depends on: the accelerator, its name and compute capability, native bf16."""

    kind: str = "cpu"  # "cuda" or "cpu"
    name: str = "cpu"
    capability: tuple[int, int] | None = None
    native_bf16: bool = False


def current_device() -> Device:
    if not torch.cuda.is_available():
        return Device()
    return Device(
        "cuda",
        torch.cuda.get_device_name(),
        torch.cuda.get_device_capability(),
        torch.cuda.is_bf16_supported(including_emulation=False),
    )


def _supported(device: Device) -> tuple[str, ...]:
    if device.kind != "cuda":
        return ("fp32",)
    fp16 = ("fp16",) if device.capability is None or device.capability >= MIN_FP16_CAPABILITY else ()
    return ("bf16",) * device.native_bf16 + fp16 + ("fp32",)


def training_precision(requested: str = "auto", device: Device | None = None) -> str:
    """bf16, fp16 or fp32 (mixed precision with fp32 master weights) for `training.precision`:
    auto picks the first the device has natively of bf16, fp16, fp32; an explicit type the
    device does not have fails naming the device."""
    device = device or current_device()
    if requested not in PRECISIONS:
        raise ValueError(f"training.precision: {requested!r} is not one of {PRECISIONS}")
    supported = _supported(device)
    if requested == "auto":
        return supported[0]
    if requested not in supported:
        raise ValueError(
            f"training.precision: {requested} is not native on {device.name} (compute capability "
            f"{device.capability}); it has {', '.join(supported)} (auto picks {supported[0]})"
        )
    return requested


def inference_dtype(device: Device | None = None) -> torch.dtype:
    """The dtype models are loaded in for caching and generation: bf16 where native, else fp16 on
    GPUs that have it, else fp32."""
    return DTYPES[training_precision("auto", device)]
