"""What hardware this host has: GPUs from nvidia-smi (or torch), the CPU, or simulated devices.

Discovery runs once at start; health (memory, utilisation, temperature) is sampled
on demand and cached briefly. nvidia-smi output is parsed by pure functions that
the tests feed with recorded outputs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shutil
import socket
import subprocess
import time

from helexa.neuron.harness import MemoryLedger
from helexa.settings import NeuronSettings
from helexa.wire.fleet import DeviceHealth, DeviceInfo, DiscoveryResponse

log = logging.getLogger("helexa.neuron.discovery")

GPU_QUERY = "index,name,memory.total,compute_cap,driver_version"
HEALTH_QUERY = "index,memory.used,memory.free,utilization.gpu,temperature.gpu"


def _int(value: str) -> int:
    try:
        return int(float(value.strip()))
    except ValueError:  # "[N/A]", "[Not Supported]"
        return 0


def parse_gpu_list(csv: str) -> tuple[list[DeviceInfo], str | None]:
    """Devices and driver version from ``nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits``."""
    devices, driver = [], None
    for line in csv.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        devices.append(
            DeviceInfo(
                index=int(fields[0]),
                name=fields[1],
                vram_total_mb=_int(fields[2]),
                compute_capability=fields[3],
                kind="cuda",
            )
        )
        if len(fields) > 4 and fields[4]:
            driver = fields[4]
    return devices, driver


def parse_health(csv: str) -> list[DeviceHealth]:
    """Per-device health from ``nvidia-smi --query-gpu=HEALTH_QUERY --format=csv,noheader,nounits``."""
    health = []
    for line in csv.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        health.append(
            DeviceHealth(
                index=int(fields[0]),
                vram_used_mb=_int(fields[1]),
                vram_free_mb=_int(fields[2]),
                utilization_pct=_int(fields[3]),
                temp_c=_int(fields[4]),
            )
        )
    return health


def failure_reason(output: str, returncode: int) -> str | None:
    """Why nvidia-smi could not talk to the driver, in an operator's words (None if it could)."""
    if returncode == 0:
        return None
    text = output.strip()
    if "version mismatch" in text.lower():
        return f"NVIDIA driver/library version mismatch (reboot or reload the driver): {text.splitlines()[0]}"
    first = text.splitlines()[0] if text else f"exit status {returncode}"
    return f"nvidia-smi failed: {first}"


def parse_cuda_version(output: str) -> str | None:
    for line in output.splitlines():
        if "CUDA Version" in line:
            return line.split(":")[-1].strip().split()[0]
    return None


def _run(*args: str) -> tuple[str, int]:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc), 1
    return done.stdout + done.stderr, done.returncode


def memory_total_mb() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class Hardware:
    """The devices of this neuron and how to read their health."""

    def __init__(self, settings: NeuronSettings, harnesses: list[str]) -> None:
        self.settings = settings
        self.cuda_version: str | None = None
        self.driver_version: str | None = None
        self.unavailable_reason: str | None = None
        self.devices = self._discover(harnesses)
        self.ledger = MemoryLedger(self.devices)
        self.harnesses = harnesses
        self._health: tuple[float, list[DeviceHealth]] | None = None

    def _discover(self, harnesses: list[str]) -> list[DeviceInfo]:
        if self.settings.simulated_devices:
            return [
                DeviceInfo(
                    index=i,
                    name=d.name,
                    vram_total_mb=d.memory_mb,
                    compute_capability=d.compute_capability,
                    kind="simulated",
                )
                for i, d in enumerate(self.settings.simulated_devices)
            ]
        if self.settings.neuron.use_gpus:
            gpus = self._nvidia_smi() or self._torch_cuda(harnesses)
            if gpus:
                return gpus
        memory = self.settings.neuron.memory_mb or int(memory_total_mb() * 0.8)
        return [DeviceInfo(index=0, name=f"cpu ({os.cpu_count()} cores)", vram_total_mb=memory, kind="cpu")]

    def _nvidia_smi(self) -> list[DeviceInfo]:
        if shutil.which("nvidia-smi") is None:
            return []
        output, code = _run("nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits")
        self.unavailable_reason = failure_reason(output, code)
        if self.unavailable_reason:
            log.error("GPUs unavailable: %s", self.unavailable_reason)
            return []
        devices, self.driver_version = parse_gpu_list(output)
        self.cuda_version = parse_cuda_version(_run("nvidia-smi")[0])
        return devices

    def _torch_cuda(self, harnesses: list[str]) -> list[DeviceInfo]:
        if "torch" not in harnesses or importlib.util.find_spec("torch") is None:
            return []
        import torch

        if not torch.cuda.is_available():
            return []
        self.cuda_version = torch.version.cuda
        devices = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                DeviceInfo(
                    index=i,
                    name=props.name,
                    vram_total_mb=props.total_memory // 2**20,
                    compute_capability=f"{props.major}.{props.minor}",
                    kind="cuda",
                )
            )
        return devices

    def discovery(self, name: str, max_prompt_tokens: int) -> DiscoveryResponse:
        return DiscoveryResponse(
            hostname=socket.gethostname(),
            os=f"{platform.system()} {platform.release()}",
            kernel=platform.version(),
            devices=self.devices,
            harnesses=self.harnesses,
            cuda_version=self.cuda_version,
            driver_version=self.driver_version,
            cuda_unavailable_reason=self.unavailable_reason,
            max_prompt_tokens=max_prompt_tokens,
            cpu_cores=os.cpu_count() or 0,
            memory_total_mb=memory_total_mb(),
            name=name,
        )

    def health(self, max_age_s: float = 2.0) -> list[DeviceHealth]:
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < max_age_s:
            return self._health[1]
        measured = {}
        if any(d.kind == "cuda" for d in self.devices) and shutil.which("nvidia-smi"):
            output, code = _run("nvidia-smi", f"--query-gpu={HEALTH_QUERY}", "--format=csv,noheader,nounits")
            if code == 0:
                measured = {h.index: h for h in parse_health(output)}
        health = []
        for device in self.devices:
            if device.index in measured:
                health.append(measured[device.index])
                continue
            used = self.ledger.used(device.index)
            health.append(
                DeviceHealth(
                    index=device.index, vram_used_mb=used, vram_free_mb=max(0, device.vram_total_mb - used)
                )
            )
        self._health = (now, health)
        return health

    def forget_health(self) -> None:
        """Drop the cached sample (after a load or unload changed memory)."""
        self._health = None
