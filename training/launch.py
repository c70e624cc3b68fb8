"""Start `vlmforge.training.train` on several processes: the DeepSpeed launcher, or torchrun where it
cannot be used.

``deepspeed`` covers one node and, with a hostfile, several (it reaches the other nodes over pdsh/ssh).
torchrun is used when the ``deepspeed`` launcher script is missing or asked for; it covers one node. On a
machine without a GPU the processes get ``DS_ACCELERATOR=cpu`` (gloo) and an even share of the cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch

from vlmforge.common.errors import ConfigError


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StaleExtensionLock(ConfigError):
    """A torch-extensions build lock that no live process holds: every JIT build would wait on it forever."""


def extensions_root() -> Path:
    """Where torch JIT-builds C++ ops (DeepSpeed's CPU ops among them): TORCH_EXTENSIONS_DIR, else the
    user cache (e.g. ~/.cache/torch_extensions); the build folders lie one or two levels below."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def _open_files() -> set[str]:
    """Real paths of the files any process on this machine has open (Linux /proc; empty elsewhere)."""
    paths: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                paths.add(os.readlink(fd))
            except OSError:
                continue
    return paths


def stale_extension_locks(root: Path | None = None) -> list[Path]:
    """Build locks under the extensions root that no live process holds open.

    torch's FileBaton creates BUILD_DIR/lock with O_EXCL and keeps it open until the build ends; a process
    killed in between leaves the file, and every later build of that op polls for it to vanish, silently
    and forever. An open descriptor on the file in /proc means a build is running (not stale).
    """
    root = extensions_root() if root is None else root
    locks = sorted({*root.glob("*/lock"), *root.glob("*/*/lock")})
    if not locks or not Path("/proc/self/fd").is_dir():
        return []
    held = _open_files()
    return [lock for lock in locks if os.path.realpath(lock) not in held and lock.exists()]


def check_extension_locks(root: Path | None = None) -> None:
    """Refuse to start where a JIT build would hang on a stale lock, saying what to delete."""
    stale = stale_extension_locks(root)
    if stale:
        raise StaleExtensionLock(
            "stale torch-extensions build lock, left by a process killed while it JIT-built an op: no "
            "process holds it, and every build of that op (DeepSpeed's CPU ops among them) would wait for it "
            "forever. Delete it and run again: rm " + " ".join(str(lock) for lock in stale)
        )


def unlink_shm_buffer(rank: int, shm_dir: Path = Path("/dev/shm")) -> bool:
    """Remove the name of this rank's DeepSpeed CPU all-reduce buffer (about 69 MB in /dev/shm).

    DeepSpeed's shared-memory comm op creates one per rank and never unlinks it, so every CPU run left
    its buffers in RAM until reboot. Call once every rank has mapped every buffer (after
    ``deepspeed.init_distributed`` and a barrier): the mappings live on, only the name goes."""
    name = "deepspeed_allreduce_buffer_{}_{}_{}_{}".format(
        os.getuid(), os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), rank
    )
    try:
        (shm_dir / name).unlink()
    except FileNotFoundError:  # no shm comm op (GPU, or ranks on several machines)
        return False
    return True


def _tool(name: str) -> str | None:
    """The console script next to this interpreter, else on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else shutil.which(name)


def launch_command(
    config: str,
    nproc: int,
    hostfile: str | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
    launcher: str = "auto",
    master_port: int | None = None,
) -> list[str]:
    """The command line that starts `nproc` training processes per node."""
    if nproc < 1:
        raise ValueError("--nproc must be at least 1")
    args = [config, *(["--resume"] if resume else []), *[f"--set={o}" for o in overrides or []]]
    port = str(master_port or free_port())
    deepspeed = _tool("deepspeed")
    if launcher == "auto":
        launcher = "deepspeed" if deepspeed or hostfile else "torchrun"
    if launcher == "deepspeed":
        if deepspeed is None:
            raise FileNotFoundError("the `deepspeed` launcher is not installed; use --launcher torchrun")
        cmd = [deepspeed, "--num_gpus", str(nproc), "--master_port", port, "--no_local_rank"]
        if hostfile:
            if not Path(hostfile).is_file():
                raise FileNotFoundError(f"--hostfile: file not found: {hostfile}")
            cmd += ["--hostfile", hostfile]
        return [*cmd, "--module", "vlmforge.training.train", *args]
    if launcher == "torchrun":
        if hostfile:
            raise ValueError("--hostfile needs the deepspeed launcher (torchrun here runs on one node)")
        torchrun = _tool("torchrun")
        if torchrun is None:
            raise FileNotFoundError("torchrun not found")
        return [
            torchrun,
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            port,
            "-m",
            "vlmforge.training.train",
            *args,
        ]
    raise ValueError(f"--launcher must be auto, deepspeed or torchrun, got {launcher!r}")


def launch_env(nproc: int) -> dict[str, str]:
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (2 * nproc))))
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    return env


def launch(
    config: str,
    nproc: int = 1,
    hostfile: str | None = None,
    resume: bool = False,
    overrides: list[str] | None = None,
    launcher: str = "auto",
) -> int:
    """Run the launcher in the foreground and return its exit code; Ctrl-C and SIGTERM are passed on."""
    cmd = launch_command(config, nproc, hostfile, resume, overrides, launcher)
    check_extension_locks()
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=launch_env(nproc))

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
