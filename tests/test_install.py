"""The built wheel, installed into a fresh environment: no import needed, opt-out, start-up cost.

These tests build the wheel from this checkout, install it into a new virtual
environment that sees this environment's packages (torch, smp, timm) but not
the checkout, and run the one-liners in fresh interpreters.
"""

import hashlib
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save

ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(out_dir: Path) -> Path:
    # Build from a copy: setuptools reuses ./build, where files deleted from the
    # checkout would linger and end up in the wheel.
    source = out_dir.parent / "source"
    shutil.copytree(
        ROOT, source,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*-output"),
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out_dir), str(source)]
    # Building without isolation reuses the installed setuptools and needs no registry.
    result = subprocess.run(command + ["--no-build-isolation"], capture_output=True, text=True)
    if result.returncode != 0:
        result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (wheel,) = out_dir.glob("hydranet_hub-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory):
    """A fresh venv with the wheel installed; returns (python, site-packages)."""
    base = tmp_path_factory.mktemp("wheel-env")
    wheel = _build_wheel(base / "dist")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()

    # Dependencies come from this environment: a path line in a .pth file adds
    # its site-packages after the new venv's own, without running its .pth files.
    parent_paths = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    Path(purelib, "_parent_env.pth").write_text("\n".join(dict.fromkeys(parent_paths)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", purelib, str(wheel)],
        check=True,
    )
    return python, Path(purelib)


def _run(python, code, env_extra=None, cwd=None):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(env_extra or {})
    return subprocess.run(
        [str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_wheel_contains_hook_and_card(installed_env):
    _, purelib = installed_env

    assert (purelib / "hydranet_hub_autoregister.pth").read_text().strip() == "import _hydranet_hub_hook"
    assert (purelib / "_hydranet_hub_hook.py").is_file()
    assert any((purelib / "hydranet_hub" / "weights_card").iterdir())


def test_smp_one_liner_without_import(installed_env, tmp_path):
    python, purelib = installed_env

    result = _run(
        python,
        """
        import sys
        import segmentation_models_pytorch as smp
        model = smp.Unet(encoder_name='hydranet', encoder_weights=None, in_channels=1, classes=3)
        print(type(model.encoder).__name__)
        print(sys.modules['hydranet_hub'].__file__)
        """,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    name, module_file = result.stdout.split()
    assert name == "HydraNetEncoder"
    assert Path(module_file).is_relative_to(purelib)


def test_timm_alone_does_not_import_smp(installed_env, tmp_path):
    python, _ = installed_env

    result = _run(
        python,
        """
        import sys
        import timm
        model = timm.create_model('hydranet_resnet34', features_only=True, in_chans=1)
        print(len(model.feature_info), 'segmentation_models_pytorch' in sys.modules)
        """,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5", "False"]


def test_opt_out_variable(installed_env, tmp_path):
    python, _ = installed_env
    code = """
        import segmentation_models_pytorch as smp
        print('hydranet' in smp.encoders.encoders)
        import hydranet_hub
        print('hydranet' in smp.encoders.encoders)
        """

    disabled = _run(python, code, {"HYDRANET_HUB_DISABLE_AUTOREGISTER": "1"}, cwd=tmp_path)
    enabled = _run(python, code, cwd=tmp_path)

    assert disabled.stdout.split() == ["False", "True"], disabled.stderr
    assert enabled.stdout.split() == ["True", "True"], enabled.stderr


@pytest.mark.parametrize("first_import", ["hydranet_hub", "timm", "segmentation_models_pytorch"])
def test_import_order_warns_nothing(installed_env, tmp_path, first_import):
    python, _ = installed_env

    result = _run(
        python,
        f"""
        import warnings
        warnings.simplefilter('error')
        import {first_import}
        import segmentation_models_pytorch as smp, timm
        print('hydranet' in smp.encoders.encoders, 'hydranet_resnet34' in timm.list_models('hydranet*'))
        """,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_startup_imports_no_torch(installed_env, tmp_path):
    python, _ = installed_env

    result = _run(python, "import sys; print('_hydranet_hub_hook' in sys.modules, 'torch' in sys.modules)", cwd=tmp_path)

    assert result.stdout.split() == ["True", "False"], result.stderr


def test_default_weights_from_hub_in_fresh_process(installed_env, hf_env, hub_server, tmp_path):
    python, _ = installed_env
    torch.manual_seed(5)
    state = {k: v.contiguous() for k, v in smp.encoders.get_encoder("resnet34", weights=None).state_dict().items()}
    data = save(state)
    commit = hub_server.add_file("mylab/hydranet", "model.safetensors", data)
    env = dict(hf_env, HYDRANET_HUB_REPO_ID=f"mylab/hydranet@{commit}", HYDRANET_HUB_SHA256=hashlib.sha256(data).hexdigest())

    result = _run(
        python,
        """
        import segmentation_models_pytorch as smp
        model = smp.Unet(encoder_name='hydranet', in_channels=1, classes=3)
        print(float(model.encoder.layer4[1].conv1.weight.double().sum()))
        """,
        env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(float(state["layer4.1.conv1.weight"].double().sum()), rel=1e-9)
