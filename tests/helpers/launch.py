"""The command line that starts N CPU processes of a module under ``accelerate launch`` (tests and benches).

On a machine without a GPU, ``accelerate launch --cpu --num_processes N`` starts one process unless MPI is set up;
the torchrun-based ``--multi_gpu`` launcher starts N processes, and our entry points (``hf_sparse_attn.training``,
``eval_suite`` with ``--cpu``) put accelerate on the CPU (gloo) themselves.
"""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the main process's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_launch_command(module: str, args: list[str], num_processes: int = 2) -> list[str]:
    """``python -m accelerate.commands.launch ... -m MODULE ARGS`` for ``num_processes`` processes on one machine."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", module, *args]
