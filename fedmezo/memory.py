"""Peak memory of a region of code, the same way everywhere (client reports, benchmarks).

CUDA: the torch allocator's peak (`reset_peak_memory_stats` + `max_memory_allocated`): weights,
activations and workspaces that torch allocated, not the CUDA context. CPU: the process's resident-set
high-water mark, `VmHWM` in /proc/self/status, reset to the current RSS by writing "5" to
/proc/self/clear_refs (Linux). Where that reset is impossible (no /proc, not permitted) the CPU peak is
the process's lifetime peak (`ru_maxrss`), an upper bound: `PeakMemory.resettable` says which.

    peak = PeakMemory(device)
    peak.reset()
    ...  # the region
    used = peak.peak_bytes()
"""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

import torch

__all__ = ["PeakMemory"]

_KIB = 1024
_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_HWM = "5"  # clear_refs value that resets VmHWM to the current RSS (Linux >= 4.0)


class PeakMemory:
    """Peak bytes of a region: CUDA allocator peak on a CUDA device, RSS high-water mark on CPU."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.resettable = True  # False once a CPU reset failed: peak_bytes() is then the lifetime peak

    def reset(self) -> None:
        """Start a region: forget the peak so far.

        On CPU a garbage collection runs first so freed-but-uncollected memory does not count. On CUDA
        tensors go back to the allocator when their last reference drops; a full collection there only
        costs time (0.5 s a round in a client process holding compiled graphs, on an H200 machine).
        """
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        try:
            _PROC_CLEAR_REFS.write_text(_RESET_HWM)
        except OSError:
            self.resettable = False

    def peak_bytes(self) -> int:
        """The peak since the last `reset` (CPU without a working reset: since the process started)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            for line in _PROC_STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * _KIB  # reported in kB
        except OSError:
            pass
        scale = 1 if sys.platform == "darwin" else _KIB  # ru_maxrss: bytes on macOS, KiB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
