"""`smp.Unet(encoder_name="hydranet")` from a warm Hub cache against a plain smp model plus a direct load.

The parent process serves random ResNet-34 encoder weights (made here, not a pretrained release)
from the loopback HubServer of the test suite and points the default release at them with
HYDRANET_HUB_REPO_ID and HYDRANET_HUB_SHA256. A worker process with HF_ENDPOINT, HF_HOME and
HF_HUB_CACHE set before huggingface_hub is imported downloads them once, then times, interleaved:

- A: `smp.Unet(encoder_name="hydranet")`, which resolves the release, checks the cached file's
  sha256 and loads it;
- B: `smp.Unet("resnet34", encoder_weights=None)` plus `safetensors.torch.load_file` of the same
  cached file and `model.encoder.load_state_dict`.

The server's request log shows whether the warm loads touched the network.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.records import Figure, Target

_logger = logging.getLogger(__name__)

REPO_ID = "bench/hydranet-resnet34"
_TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
_COLD_DONE = "cold-load-done"
# Variables that could send huggingface_hub elsewhere or switch it to another mode.
_UNSET = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HTTP_PROXY",
          "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@dataclass(frozen=True)
class HubLoadSettings:
    """Repetitions of the warm-cache load benchmark.

    Attributes:
        rounds: Timed interleaved rounds of A and B.
        threads: torch threads in the worker process.
    """

    rounds: int = 5
    threads: int = 1


def _random_encoder_file() -> tuple[bytes, bytes]:
    """Return safetensors bytes of a randomly initialised resnet34 encoder and the release's config.json."""
    import segmentation_models_pytorch as smp
    import torch
    from safetensors.torch import save

    from hydranet_hub import get_release

    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder("resnet34", weights=None)
    state = {name: tensor.contiguous() for name, tensor in encoder.state_dict().items()}
    config = json.dumps(get_release("msd7").config(), indent=2).encode()
    return save(state), config


def _worker_environment(endpoint: str, hf_home: Path, commit: str, sha256: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in _UNSET}
    environment.update({
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "HYDRANET_HUB_REPO_ID": f"{REPO_ID}@{commit}",
        "HYDRANET_HUB_SHA256": sha256,
    })
    return environment


def run(settings: HubLoadSettings) -> dict[str, Any]:
    """Serve the weights once, then time warm loads in a worker process.

    Returns:
        {"settings", "weights_mib", "cold_load_s", "warm", "requests", "figures"}.

    Raises:
        RuntimeError: If the worker fails; the message contains its stderr.
    """
    sys.path.insert(0, str(_TESTS_DIR))
    from hubserver import HubServer

    weights, config = _random_encoder_file()
    sha256 = hashlib.sha256(weights).hexdigest()
    with HubServer() as server, tempfile.TemporaryDirectory(prefix="hydranet-bench-hf-") as hf_home, \
            tempfile.TemporaryFile("w+") as errors:
        server.add_file(REPO_ID, "config.json", config)
        commit = server.add_file(REPO_ID, "model.safetensors", weights)
        environment = _worker_environment(server.url, Path(hf_home), commit, sha256)

        command = [sys.executable, "-m", "benchmarks.hub_load", "--worker", "--rounds", str(settings.rounds),
                   "--threads", str(settings.threads)]
        # stderr goes to a file, so a chatty worker cannot block on a full pipe while stdout is read.
        worker = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=errors, text=True,
                                  cwd=Path(__file__).resolve().parent.parent)
        assert worker.stdout is not None
        # smp may print to stdout too; the worker's own lines are the marker and the last line.
        line = ""
        for line in worker.stdout:
            if line.strip() == _COLD_DONE:
                break
        requests_after_cold = server.request_count()
        output, _ = worker.communicate(timeout=1800)
        requests_total = server.request_count()
        errors.seek(0)
        if worker.returncode != 0 or line.strip() != _COLD_DONE:
            raise RuntimeError(f"Hub load worker failed (exit {worker.returncode}): {errors.read()[-4000:]}")

    result = json.loads(output.strip().splitlines()[-1])
    warm_requests = requests_total - requests_after_cold
    figure = Figure(
        "hub_load.warm_vs_direct", 'smp.Unet(encoder_name="hydranet") from a warm Hub cache (time)',
        'smp.Unet("resnet34", encoder_weights=None) + load_file + load_state_dict', result["time_ratio"], "x",
        Target("<=", 1.1),
        f"medians {result['median_hydranet_s'] * 1000:.0f} vs {result['median_direct_s'] * 1000:.0f} ms "
        f"({result['clock']} time), wall-clock ratio {result['time_ratio_wall']:.2f}; "
        f"sha256 of the {len(weights) / 2**20:.0f} MiB file {result['sha256_s'] * 1000:.0f} ms; "
        f"{warm_requests} Hub requests during warm loads",
    )
    return {
        "settings": settings.__dict__,
        "weights_mib": len(weights) / 2**20,
        "cold_load_s": result["cold_load_s"],
        "warm": result,
        "requests": {"cold": requests_after_cold, "warm": warm_requests},
        "figures": [figure.to_dict()],
    }


def _worker(rounds: int, threads: int) -> None:
    """Run inside the worker process: one cold load, then interleaved warm loads; print JSON."""
    import segmentation_models_pytorch as smp
    import torch
    from safetensors.torch import load_file

    import hydranet_hub
    from benchmarks.timing import paired_speedup, primary_clock, time_interleaved
    from hydranet_hub.hub import sha256_of_file

    torch.set_num_threads(threads)
    start = time.perf_counter()
    smp.Unet(encoder_name="hydranet")
    cold_load_s = time.perf_counter() - start
    print(_COLD_DONE, flush=True)

    weights_path = hydranet_hub.resolve_weights("msd7").weights_path

    def hydranet_model() -> None:
        smp.Unet(encoder_name="hydranet")

    def direct_load() -> None:
        model = smp.Unet("resnet34", encoder_weights=None)
        model.encoder.load_state_dict(load_file(str(weights_path)))

    timings = time_interleaved({"hydranet": hydranet_model, "direct": direct_load}, rounds)
    clock = primary_clock(threads)
    median = "median_cpu_s" if clock == "cpu" else "median_wall_s"

    # One sha256 of the cached file, on the same clock as the loads, shows how much of the gap it explains.
    read_clock = time.process_time if clock == "cpu" else time.perf_counter
    hash_start = read_clock()
    sha256_of_file(weights_path)
    sha256_s = read_clock() - hash_start

    print(json.dumps({
        "clock": clock,
        "cold_load_s": cold_load_s,
        "median_hydranet_s": getattr(timings["hydranet"], median),
        "median_direct_s": getattr(timings["direct"], median),
        # Throughput of B over A is A's time over B's: how much longer the HydraNet path takes.
        "time_ratio": paired_speedup(timings["direct"], timings["hydranet"], clock=clock),
        "time_ratio_wall": paired_speedup(timings["direct"], timings["hydranet"]),
        "sha256_s": sha256_s,
        "timings": {name: timing.to_dict() for name, timing in timings.items()},
    }))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Worker of the warm Hub cache benchmark; run by benchmarks.run.")
    parser.add_argument("--worker", action="store_true", help="Run as the worker process (needs the Hub variables).")
    parser.add_argument("--rounds", type=int, default=HubLoadSettings.rounds, help="Timed interleaved rounds.")
    parser.add_argument("--threads", type=int, default=HubLoadSettings.threads, help="torch threads.")
    args = parser.parse_args(argv)
    if not args.worker:
        parser.error("run the benchmarks with `python -m benchmarks.run`; --worker is for its subprocess")
    _worker(args.rounds, args.threads)


if __name__ == "__main__":
    main()
