"""Whole processes, measured from outside: the simulator's process, and a ``/usr/bin/time``-
style launcher for every measured client.

Why a launcher rather than ``resource.getrusage(RUSAGE_CHILDREN)`` in the runner: Linux keeps
a process's RSS high-water mark across ``exec`` (``signal->maxrss`` takes the old image's
peak), and Python spawns children with ``vfork``, whose old image *is* the parent's. A child
of the runner (which imports pyarrow and holds bodies: 100+ MB) would report at least the
runner's RSS. So the runner starts a tiny interpreter (``python -I -S``, ~9 MB) that forks
and execs the measured command and collects it with ``os.wait4``: wall from fork to exit,
user and system CPU, ``ru_maxrss``, and a timeline sampled from ``/proc/<pid>`` (CPU seconds
and RSS every 0.1 s) from which the steady-state CPU and the RSS of each half are read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workload import ANCHOR, API_KEY, SEED

# Runs as ``python -I -S -c LAUNCHER RESULT_JSON INTERVAL CMD...``: standard library only.
LAUNCHER = r"""
import json, os, sys, threading, time
out, every, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
samples = []
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
done = threading.Event()
def sample():
    tck, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    while not done.wait(every):
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/statm") as f:
                rss = int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
        samples.append((time.perf_counter() - t0, (int(st[11]) + int(st[12])) / tck, rss / 2**20))
thread = threading.Thread(target=sample, daemon=True)
thread.start()
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
done.set()
thread.join()
with open(out, "w") as f:
    json.dump({"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
               "exit": os.waitstatus_to_exitcode(status), "samples": samples}, f)
"""


@dataclass
class Whole:
    """One measured process: what ``/usr/bin/time`` would say, plus its own last JSON line."""

    wall: float  # seconds, fork to exit
    user: float  # CPU seconds
    system: float
    peak_rss_mb: float  # ru_maxrss of the process
    samples: list[tuple[float, float, float]]  # (seconds since start, CPU seconds, RSS MiB)
    out: dict[str, Any] = field(default_factory=dict)  # the child's own report, if it printed one
    server_cpu: float | None = None  # the simulator's CPU seconds over the same interval

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def steady_cpu_share(self, start: float = 0.25, end: float = 0.95) -> float | None:
        """CPU share of one core between ``start`` and ``end`` of the wall (start-up excluded)."""
        inside = [s for s in self.samples if start * self.wall <= s[0] <= end * self.wall]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def rss_halves(self) -> tuple[float | None, float | None]:
        """Highest sampled RSS in the first and in the second half of the run."""
        first = [s[2] for s in self.samples if s[0] <= self.wall / 2]
        second = [s[2] for s in self.samples if s[0] > self.wall / 2]
        return max(first, default=None), max(second, default=None)


def run_whole(cmd: list[str], *, log_dir: Path, name: str, env: dict[str, str] | None = None,
              timeout: float = 1800, every: float = 0.1, server: SimulatorProcess | None = None) -> Whole:  # fmt: skip
    """Run ``cmd`` under the launcher; raise with its stderr if it fails or times out."""
    result = log_dir / f"{name}.whole.json"
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), str(every), *cmd]
    server0 = server.cpu() if server else None
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(launcher, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"{name} did not finish within {timeout:.0f} s; stderr: {tail(err_path)}") from None
    server1 = server.cpu() if server else None
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"{name}: launcher failed (exit {proc.returncode}): {tail(err_path)}")
    doc = json.loads(result.read_text())
    if doc["exit"] != 0:
        raise RuntimeError(f"{name} exited {doc['exit']}: {' '.join(cmd[:6])} ...\n{tail(err_path)}")
    lines = out_path.read_text(errors="replace").strip().splitlines()
    own: dict[str, Any] = {}
    if lines and lines[-1].startswith("{"):
        own = json.loads(lines[-1])
    w = Whole(doc["wall"], doc["user"], doc["sys"], doc["maxrss_mb"], [tuple(s) for s in doc["samples"]], own)
    if server0 is not None and server1 is not None:
        w.server_cpu = server1 - server0
    return w


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class SimulatorProcess:
    """``python -m bulkexport.simulator`` in its own process, so its CPU is not the client's."""

    def __init__(self, *, latency: float, rate_limit: int, cache_size: int | None = None) -> None:
        self.latency = latency
        self.rate_limit = rate_limit
        self.cache_size = cache_size  # rendered bodies it keeps (None: its default, 4,096)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process it logs)

    def __enter__(self) -> SimulatorProcess:
        cmd = [sys.executable, "-m", "bulkexport.simulator", "--port", "0", "--api-key", API_KEY,
               "--seed", str(SEED), "--anchor-date", ANCHOR.isoformat(),
               "--rate-limit", str(self.rate_limit), "--latency", str(self.latency)]  # fmt: skip
        if self.cache_size is not None:
            cmd += ["--cache-size", str(self.cache_size)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            self._err.seek(0)
            raise RuntimeError(f"simulator did not start: {line!r} {self._err.read()[-2000:]!r}")
        self.url = line
        return self

    def cpu(self) -> float | None:
        """The simulator's CPU seconds so far (Linux /proc), to tell when it is the bottleneck."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


def wait_quiet(seconds: float = 0.5) -> None:
    """A short pause between measured processes, so one's exit does not overlap the next."""
    time.sleep(seconds)
