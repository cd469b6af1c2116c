"""Launch a two-rank torchrun job on 127.0.0.1, as a user would start it (tests and fixtures)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).parent.parent / "samples" / "ddp_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port <free> ARGS`, on CPU with
    gloo even where GPUs are present (CUDA_VISIBLE_DEVICES is emptied): the tests' figures are gloo's."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "0",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})
