"""Precision from device capabilities (no GPU needed): bf16 only where native, fp16 with loss
scaling on GPUs without it (Discovery's V100 default, P100, T4), fp32 on the CPU and on GPUs
older than fp16 arithmetic; an explicit precision the device lacks fails naming it."""

import pytest
import torch
from test_training import train_cfg

from kdsweep.core.precision import Device, current_device, inference_dtype, training_precision

V100 = Device("cuda", "Tesla V100-SXM2-32GB", (7, 0), native_bf16=False)  # bf16 only emulated
T4 = Device("cuda", "Tesla T4", (7, 5), native_bf16=False)
P100 = Device("cuda", "Tesla P100-PCIE-16GB", (6, 0), native_bf16=False)
K80 = Device("cuda", "Tesla K80", (3, 7), native_bf16=False)
A100 = Device("cuda", "NVIDIA A100-SXM4-80GB", (8, 0), native_bf16=True)
H200 = Device("cuda", "NVIDIA H200", (9, 0), native_bf16=True)
CPU = Device()


@pytest.mark.parametrize(
    ("device", "training", "inference"),
    [
        (V100, "fp16", torch.float16),
        (T4, "fp16", torch.float16),
        (P100, "fp16", torch.float16),
        (K80, "fp32", torch.float32),
        (A100, "bf16", torch.bfloat16),
        (H200, "bf16", torch.bfloat16),
        (CPU, "fp32", torch.float32),
    ],
)
def test_auto_picks_what_the_device_has_natively(device, training, inference):
    assert training_precision("auto", device) == training
    assert inference_dtype(device) == inference


def test_explicit_precision_is_kept_or_refused_naming_the_device():
    assert training_precision("fp32", V100) == "fp32" and training_precision("fp16", A100) == "fp16"
    with pytest.raises(ValueError, match=r"bf16 is not native on Tesla V100-SXM2-32GB \(compute capability \(7, 0\)\)"):
        training_precision("bf16", V100)
    with pytest.raises(ValueError, match="fp16 is not native on cpu"):
        training_precision("fp16", CPU)


def test_this_machine_and_the_trainer_arguments():
    from kdsweep.core.trainer import training_arguments

    device = current_device()
    args = training_arguments(train_cfg(precision="auto"), 1e-3, "unused")
    expected = training_precision("auto", device)
    assert (args.bf16, args.fp16) == (expected == "bf16", expected == "fp16")
    if device.kind == "cuda":  # a lent GPU: the emulated-bf16 answer must not decide
        assert device.native_bf16 == torch.cuda.is_bf16_supported(including_emulation=False)
