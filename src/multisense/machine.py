"""What machine a figure was measured on: CPU model and the instruction sets that decide its
speed (AVX2 only, AVX-512, AVX-512 bf16, AMX), core count, torch and its CPU kernel level,
threads, GPU; and the load average.

The machines this project runs on differ by 2x in matmul rate and in whether bf16 is fast, so
every benchmark and experiment prints this beside its numbers.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import torch

# The CPU flags that change what torch's kernels can do, in /proc/cpuinfo's spelling.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    """Which of SPEED_FLAGS this CPU has (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    have = set(m.group(1).split()) if m else set()
    return [f for f in SPEED_FLAGS if f in have]


def machine(device: str = "cpu") -> dict[str, str]:
    info = {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count())}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            info["cpu"] = m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info["flags"] = " ".join(cpu_flags()) or "unknown"
    info["torch"] = torch.__version__
    capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
    if capability is not None:
        info["kernels"] = capability()  # what ATen dispatches to: DEFAULT, AVX2, AVX512 (ATEN_CPU_CAPABILITY)
    info["threads"] = str(torch.get_num_threads())
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"
