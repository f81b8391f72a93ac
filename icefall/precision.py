"""Whether bfloat16 autocast makes training faster on this machine.

On a CPU, bfloat16 pays off only with hardware support (AVX512-BF16 or AMX
tiles: oneDNN then runs the matmuls and convolutions natively); without it
bfloat16 is emulated and slower than float32. On CUDA it needs a GPU that
supports it (Ampere or newer).

    python -m icefall.precision     # prints True or False for the device
                                    # training would use (CUDA if present)
"""

from pathlib import Path
from typing import Optional

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: Optional[str] = None) -> bool:
    """True when the CPU flags (Linux /proc/cpuinfo, or the text given)
    include native bfloat16 arithmetic; False when unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            return any(f in flags for f in CPU_BF16_FLAGS)
    return False


def bf16_is_fast(device_type: str) -> bool:
    """Whether ``--use-bf16 true`` is worth it on ``device_type`` ("cpu" or "cuda")."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def main() -> None:
    import torch

    print(bf16_is_fast("cuda" if torch.cuda.is_available() else "cpu"))


if __name__ == "__main__":
    main()
