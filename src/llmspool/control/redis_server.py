"""The embedded Redis that ``llmspool serve`` runs when no ``LLMSPOOL_REDIS_URL`` is given."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from llmspool.shared.errors import ConfigError

MIN_VERSION = (7, 0)
INSTALL_HINT = (
    "llmspool needs redis-server >= 7.0 on PATH: `sudo apt-get install redis-server` "
    "(Debian/Ubuntu), `brew install redis` (macOS), or point LLMSPOOL_REDIS_URL at a running "
    "Redis."
)


def find_redis_server() -> str:
    """A redis-server new enough for llmspool, or a ConfigError saying how to get one."""
    path = shutil.which("redis-server")
    if path is None:
        raise ConfigError(f"redis-server not found. {INSTALL_HINT}")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    version = _parse_version(out)
    if version < MIN_VERSION:
        raise ConfigError(f"{path} is Redis {'.'.join(map(str, version))}; {INSTALL_HINT}")
    return path


def _parse_version(text: str) -> tuple[int, ...]:
    for word in text.split():
        if word.startswith("v="):
            return tuple(int(p) for p in word[2:].split(".")[:2])
    return (0,)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def start_redis(
    data_dir: Path, host: str = "127.0.0.1", port: int = 6379
) -> subprocess.Popen[bytes]:
    """Start redis-server with append-only persistence in ``data_dir``; wait until it answers.

    The process stays in the caller's process group, so stopping the group stops it too.
    """
    if port_in_use(host, port):
        raise ConfigError(
            f"port {port} on {host} is taken (another Redis?). Stop it, or set "
            f"LLMSPOOL_REDIS_URL=redis://{host}:{port}/0 to use it."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        find_redis_server(),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--loglevel",
        "warning",
    ]
    process = subprocess.Popen(args)
    _wait_listening(process, host, port)
    return process


def _wait_listening(process: subprocess.Popen[bytes], host: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"redis-server exited at start (code {process.returncode})")
        if port_in_use(host, port):
            return
        time.sleep(0.05)
    process.kill()
    raise ConfigError("redis-server did not start listening within 10 s")
