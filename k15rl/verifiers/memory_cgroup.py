"""A memory cgroup per sandbox: one bound on the memory of all a program's processes
together (report §2.3.5: the code reward runs model-written programs on the training
machine).

`RLIMIT_AS` bounds each process; a program may start `Limits.processes` of them, so
without a cgroup it could take that many times `Limits.memory_mb`. The host puts each
supervisor, and so everything it starts, in a cgroup of its own under the trainer's, with
`Limits.total_memory_mb` as its limit and no swap; the kernel's OOM killer then acts
inside it, and its `oom_kill` counter tells the host which runs it ended.

Written here, with a few file writes, because the Python libraries for cgroups know
only v1 (cgroupspy) or need systemd's D-Bus API, which containers often lack.
Works with cgroup v1's memory hierarchy. On v2 it needs the memory controller enabled
for the children of the trainer's cgroup, which v2 refuses while that cgroup holds
processes (the trainer's own), so in practice only from the root cgroup. Elsewhere (a
non-root caller, no cgroupfs, v2 in a container) `create` returns None with the reason,
and the sandbox runs without one.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
_names = itertools.count()


@functools.lru_cache(maxsize=None)
def _parent() -> tuple[Path | None, int, str]:
    """(this process's memory cgroup folder, cgroup version, why none)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as e:
        return None, 0, f"cannot read /proc/self/cgroup: {e}"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return ROOT / "memory" / path.lstrip("/"), 1, ""
    unified = [p for c, p in (ln.split(":", 2)[1:] for ln in lines) if c == ""]
    if unified and (ROOT / "cgroup.controllers").exists():
        return ROOT / unified[0].lstrip("/"), 2, ""
    return None, 0, "no memory cgroup controller is mounted"


@dataclass
class MemoryCgroup:
    """A cgroup that bounds the memory of the processes moved into it."""

    path: Path
    version: int

    @classmethod
    def create(cls, limit_mb: int) -> tuple["MemoryCgroup | None", str]:
        """A new cgroup under this process's with a limit of `limit_mb` (no swap), or
        (None, why not)."""
        parent, version, why = _parent()
        if parent is None:
            return None, why
        path = parent / f"k15rl-sandbox-{os.getpid()}-{next(_names)}"
        try:
            path.mkdir()
        except OSError as e:
            return None, f"cannot create a cgroup under {parent}: {e.strerror or e}"
        group = cls(path, version)
        limit = str(limit_mb * 2**20)
        try:
            if version == 1:
                (path / "memory.limit_in_bytes").write_text(limit)
                if (path / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap either
                    (path / "memory.memsw.limit_in_bytes").write_text(limit)
            else:
                if "memory" not in (path / "cgroup.controllers").read_text().split():
                    (parent / "cgroup.subtree_control").write_text("+memory")
                (path / "memory.max").write_text(limit)
                if (path / "memory.swap.max").exists():
                    (path / "memory.swap.max").write_text("0")
        except OSError as e:
            group.remove()
            return None, f"cannot set a memory limit in {path}: {e.strerror or e}"
        return group, ""

    @property
    def procs(self) -> Path:
        """Writing a pid here moves that process (its children follow from then on)."""
        return self.path / "cgroup.procs"

    def holds(self, pid: int) -> bool:
        """Whether process `pid` is in this cgroup."""
        try:
            return str(pid) in self.procs.read_text().split()
        except OSError:
            return False

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer has ended in this cgroup so far."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Remove the cgroup (once its processes are gone; a leftover is empty and small)."""
        try:
            self.path.rmdir()
        except OSError:
            pass
