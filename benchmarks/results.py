"""Every benchmark's last result: `benchmarks/results/<name>.json` (committed).

A results file holds the benchmark's own numbers plus where they come from:

    command   the exact command line (sys.orig_argv)
    commit    git HEAD when the benchmark started, with "-dirty" when tracked files had
              uncommitted changes (`commit_at_end` too, if the checkout changed while it ran)
              (changes under benchmarks/results/ itself do not count)
    date      UTC, ISO 8601
    machine   CPU model, cores, RAM, torch version and threads, Python, OS, and how busy
              the machine was with other work meanwhile (`others_cores`: CPU time of
              processes outside this benchmark's own process and its waited-for children,
              per second of wall time; Linux only; daemons such as Ray's count as others)
    wall_s    the benchmark's wall time: from the start of its process to the write,
              unless the benchmark gives its own

`benchmarks/render_docs.py` (`make docs`) renders the docs' tables from these files; a
benchmark only calls `write_result(name, payload)` at its end.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def _process_start() -> float:
    """When this process started (epoch seconds, to about 1 s; Linux /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (Linux /proc/stat)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return None


_START = _process_start()
_IMPORTED, _BUSY0 = time.time(), _busy_seconds()


def others_cores() -> float | None:
    """Cores' worth of CPU that other processes used on average since this module's import."""
    busy, t = _busy_seconds(), os.times()
    if busy is None or _BUSY0 is None or time.time() - _IMPORTED < 1:
        return None
    own = t.user + t.system + t.children_user + t.children_system
    return max(0.0, (busy - _BUSY0 - own) / (time.time() - _IMPORTED))


def git_commit(root: Path = ROOT) -> str:
    """HEAD, plus "-dirty" if a tracked file outside benchmarks/results/ differs from it;
    "unknown" outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)benchmarks/results"], cwd=root, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


_COMMIT = git_commit()  # at import: the code this process runs (a checkout may move on meanwhile)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What the numbers were measured on. torch is never imported here: its threads are known
    only if the benchmark imported it, its version is read from the installed package otherwise."""
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        ram_gb = None
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gb": round(ram_gb, 1) if ram_gb else None,
            "python": platform.python_version(), "os": platform.platform()}
    torch = sys.modules.get("torch")
    info["torch"] = torch.__version__ if torch else _installed_version("torch")  # children may import it
    info["torch_threads"] = torch.get_num_threads() if torch else None
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    others = others_cores()
    info["others_cores"] = round(others, 2) if others is not None else None
    return info


def command_line() -> str:
    """The command as typed: interpreter and script relative to the repository when inside it."""
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    for i, a in enumerate(argv):
        p = Path(a)
        if p.is_absolute() and p.is_relative_to(ROOT):
            argv[i] = str(p.relative_to(ROOT))
    return shlex.join(argv)


def write_result(name: str, payload: dict, *, wall_s: float | None = None, results_dir: Path | None = None) -> Path:
    """Write `payload` and its provenance to RESULTS_DIR/<name>.json (atomically); returns the path."""
    dest_dir = Path(results_dir) if results_dir else RESULTS_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    end = git_commit()
    record = {
        "name": name,
        "command": command_line(),
        "commit": _COMMIT,  # the code the benchmark started with
        **({"commit_at_end": end} if end != _COMMIT else {}),  # the checkout changed while it ran
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "wall_s": round(time.time() - _START if wall_s is None else wall_s, 1),
        **payload,
    }
    dest = dest_dir / f"{name}.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float) + "\n")
    os.replace(tmp, dest)
    shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
    print(f"results: {shown}", flush=True)
    return dest


def read_result(name: str, results_dir: Path | None = None) -> dict | None:
    """The last result of benchmark `name`, or None if it has not been written yet."""
    path = (Path(results_dir) if results_dir else RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_child(cmd: list[str], name: str, env: dict[str, str] | None = None) -> dict:
    """One measurement in a child process of its own (so its peak memory is its own), with
    environment `env` (default: this one's): the JSON object on its last stdout line. A
    failing child stops the benchmark, naming `name` and showing the end of its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{name}: exit code {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_name(folder: str | Path) -> str:
    """A Hugging Face folder's model name (its config's _model_name_or_path), else the folder."""
    return json.loads((Path(folder) / "config.json").read_text()).get("_model_name_or_path") or str(folder)
