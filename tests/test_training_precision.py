"""Autocast mode selection and the CPU bf16 path."""

import pytest
import torch

from hydranet_hub.training.precision import autocast_factory, make_grad_scaler, resolve_amp

CPU = torch.device("cpu")


def test_auto_is_none_on_cpu():
    assert resolve_amp("auto", CPU) == "none"


def test_fp16_on_cpu_rejected():
    with pytest.raises(ValueError, match="--amp bf16"):
        resolve_amp("fp16", CPU)


def test_bf16_autocast_on_cpu_runs_convolutions_in_bf16():
    convolution = torch.nn.Conv2d(3, 4, 3)

    with autocast_factory("bf16", CPU)():
        output = convolution(torch.randn(1, 3, 8, 8))

    assert output.dtype == torch.bfloat16


def test_scaler_enabled_only_for_fp16():
    assert not make_grad_scaler("bf16", CPU).is_enabled()
    assert not make_grad_scaler("none", CPU).is_enabled()
