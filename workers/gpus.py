"""Which devices this box has, and the worker plan: one worker per GPU, pinned.

Detection tries NVML, then `nvidia-smi -L`, then torch in a child process (so the caller never
initialises CUDA: the workers are started after this, and CUDA must not be set up before a
fork). No GPU: one CPU worker. `--devices 0,1` overrides detection; with
`queue.simulate_gpus` (env `APPLIANCE_QUEUE__SIMULATE_GPUS=1`, for tests on CPU-only boxes) the
named devices become CPU workers that are still called `gpuN@host`.

Each worker also gets its share of the CPU cores for its model's CPU work (`cpu_threads`):
torch's OpenMP threads spin while they wait for work, so two pools sized to every core fight
over the same cores, and so do the web server, the watcher and Redis.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from appliance.queue import LANES, QUEUE_ORDER


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str | None = None


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process to start."""

    name: str  # gpu0 | cpu
    hostname: str  # gpu0@host: Celery's node name, the job store's `worker`
    device: str  # what the job store shows: "cuda:0 NVIDIA H100 80GB HBM3", "cpu"
    env: dict[str, str] = field(default_factory=dict)
    queues: tuple[str, ...] = QUEUE_ORDER


def detect_gpus() -> list[Gpu]:
    for probe in (_nvml, _nvidia_smi, _torch_in_child):
        try:
            gpus = probe()
        except Exception:
            continue
        if gpus is not None:
            return gpus
    return []


def _nvml() -> list[Gpu] | None:
    import pynvml  # nvidia-ml-py, in the `gpu` extra

    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            gpus.append(Gpu(i, _text(name), _text(uuid)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


_SMI_LINE = re.compile(r"^GPU (\d+): (.+?)(?: \(UUID: ([^)]+)\))?$")


def _nvidia_smi() -> list[Gpu] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
    ).stdout
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> list[Gpu]:
    gpus = []
    for line in out.splitlines():
        match = _SMI_LINE.match(line.strip())
        if match:
            gpus.append(Gpu(int(match.group(1)), match.group(2), match.group(3)))
    return gpus


def _torch_in_child() -> list[Gpu] | None:
    code = (
        "import torch\n"
        "for i in range(torch.cuda.device_count()):\n"
        "    print(i, torch.cuda.get_device_name(i))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    gpus = []
    for line in out.splitlines():
        index, _, name = line.partition(" ")
        gpus.append(Gpu(int(index), name))
    return gpus


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_devices(text: str) -> list[str]:
    """`"0,1"` -> ["0", "1"]; `"cpu"` -> ["cpu"]."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        if d != "cpu" and not d.isdigit():
            raise ValueError(f"bad device {d!r}: use GPU indexes like 0,1 or 'cpu'")
    if len(set(devices)) != len(devices):
        raise ValueError("a device is named twice")
    return devices


def cpu_threads_per_worker(workers: int, cores: int | None = None) -> int:
    """An equal share of the cores per worker, one share kept for everything else."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // (max(1, workers) + 1))


def plan_workers(
    devices: list[str] | None = None,
    *,
    gpus: list[Gpu] | None = None,
    simulate: bool = False,
    host: str | None = None,
    queues: tuple[str, ...] = QUEUE_ORDER,
    name: str | None = None,
    cpu_threads: int = 0,
    cores: int | None = None,
) -> list[WorkerSpec]:
    """One WorkerSpec per device: detected GPUs, or `devices` (checked against them).

    Worker names are gpuN / cpu, `text` for a CPU worker of no job lane (text, webhooks; so
    it can run beside a CPU job worker), or `name` (one device only). Each gets `cpu_threads` CPU
    threads, or with 0 its share of `cores` (default: this machine's).
    """
    host = host or socket.gethostname()
    if gpus is None:
        gpus = [] if simulate else detect_gpus()
    by_index = {g.index: g for g in gpus}
    if devices is None:
        devices = [str(g.index) for g in gpus] or ["cpu"]
    if name is not None and len(devices) != 1:
        raise ValueError("a worker name needs exactly one device")
    specs = []
    for dev in devices:
        if dev == "cpu":
            # No job lane (text, webhooks): a worker that loads no vision model.
            cpu_name = name or ("cpu" if set(queues) & set(LANES) else "text")
            specs.append(_cpu_spec(cpu_name, host, "cpu", queues))
            continue
        index = int(dev)
        if simulate:
            label = f"cpu (simulating gpu{index})"
            specs.append(_cpu_spec(name or f"gpu{index}", host, label, queues))
            continue
        if index not in by_index:
            found = ", ".join(str(i) for i in sorted(by_index)) or "none"
            raise ValueError(f"no GPU {index} on this machine (found: {found})")
        gpu = by_index[index]
        env = {
            "CUDA_VISIBLE_DEVICES": str(index),
            # nvidia-smi's numbering (PCI order), not CUDA's default "fastest first".
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "APPLIANCE_DEVICE": "cuda",
            "APPLIANCE_WORKER_DEVICE": f"cuda:{index} {gpu.name}",
        }
        worker = name or f"gpu{index}"
        specs.append(
            WorkerSpec(worker, f"{worker}@{host}", env["APPLIANCE_WORKER_DEVICE"], env, queues)
        )
    threads = str(cpu_threads or cpu_threads_per_worker(len(specs), cores))
    for spec in specs:
        # OMP_NUM_THREADS too: it sizes every OpenMP pool in the process, not only torch's.
        spec.env.update(APPLIANCE_CPU_THREADS=threads, OMP_NUM_THREADS=threads)
    return specs


def _cpu_spec(name: str, host: str, device: str, queues: tuple[str, ...]) -> WorkerSpec:
    env = {"CUDA_VISIBLE_DEVICES": "", "APPLIANCE_DEVICE": "cpu", "APPLIANCE_WORKER_DEVICE": device}
    return WorkerSpec(name, f"{name}@{host}", device, env, queues)
