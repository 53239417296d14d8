"""Sandbox supervisor: the trusted process that runs untrusted programs (report §2.3.5).

Started by `k15rl.verifiers.sandbox` as `python -I -S _sandbox_supervisor.py`, normally
as PID 1 of fresh PID, mount and network namespaces (`unshare`). It imports nothing
from k15rl (only the standard library), reads one JSON job from stdin, and writes one
JSON line to stdout, tagged with the job's nonce.

In namespace mode it first builds the filesystem view the programs see: every existing
mount re-mounted read-only, a fresh size-limited tmpfs on /tmp (the only writable
place, gone with the namespace), empty read-only tmpfs over the hidden paths (the
project, the caller's home and working directory, /root, /home, ...), and the Python
installation bound back read-only where it lives. Then, for every test, it starts one
runner process that drops privileges (another uid when the supervisor is real root;
no capabilities and no-new-privs otherwise), applies resource limits, and runs the
program. After each test every other process of the namespace is killed
(`kill(-1, SIGKILL)` from PID 1), so nothing a program spawned outlives its test.

Without namespaces (`"namespaces": false`) it runs the same runner in a new session
and kills the session (and, when it could change uid, every process of that uid)
afterwards: weaker, see docs/code_rewards.md.
"""

import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 32, 1024, 2048, 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
PR_SET_NO_NEW_PRIVS, PR_SET_SECUREBITS, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 38, 28, 4, 24
# SECBIT_NOROOT|_LOCKED, NO_SETUID_FIXUP|_LOCKED, KEEP_CAPS_LOCKED: uid 0 gains no
# capabilities on execve, and the bits cannot be undone.
SECUREBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
MEMORY_EXIT = 86  # the runner's exit status after a MemoryError

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mountinfo():
    """(mount point, per-mount flags) of every mount, from /proc/self/mountinfo."""
    out = []
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        point = f[4].encode().decode("unicode_escape")
        flags = 0
        for o in f[5].split(","):
            flags |= {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                      "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}.get(o, 0)
        out.append((point, flags))
    return out


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def build_filesystem(job):
    """The read-only view with a private writable /tmp (namespace mode). Returns notes."""
    notes = []
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for point, flags in _mountinfo():
        if _under(point, "/proc") or flags & MS_RDONLY:
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except OSError as e:
            notes.append(f"read-only remount of {point} failed: {e.strerror}")
    # Kept paths (the Python installation, a virtual environment) are bound read-only to
    # a staging tmpfs before /tmp and the hidden folders are covered: they may live
    # under either (a checkout in /tmp with its .venv, a project folder).
    keep = [p for p in job["keep_paths"] if os.path.isdir(p)]
    tmp_opts = f"size={job['disk_mb']}m,mode=755"
    shm = os.path.isdir("/dev/shm")
    if not shm:  # nowhere else to stage: kept paths under /tmp are then not kept
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    stage_root = "/dev/shm" if shm else "/tmp"
    if shm:
        _mount("tmpfs", stage_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=700")
    staged = {}
    for i, p in enumerate(keep):
        stage = f"{stage_root}/.keep{i}"
        os.mkdir(stage)
        _mount(p, stage, None, MS_BIND | MS_REC)
        _mount(None, stage, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        staged[p] = stage
    # the only writable place: a fresh tmpfs, bounded in size, gone with the namespace
    if shm:
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts)
    for p in [p for p in keep if shm and _under(p, "/tmp") and p in staged]:  # back in place under the new /tmp
        os.makedirs(p, mode=0o755, exist_ok=True)
        _mount(staged.pop(p), p, None, MS_MOVE)
    for h in job["hide_paths"]:
        if not os.path.isdir(h) or any(_under(h, s) for s in ("/proc", "/tmp", "/dev")):
            continue
        _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        inside = [p for p in keep if _under(p, h) and p in staged]
        for p in inside:  # bind the kept path (e.g. the Python installation) back in place
            os.makedirs(p, mode=0o755, exist_ok=True)
            stage = staged.pop(p)
            _mount(stage, p, None, MS_MOVE)
            os.rmdir(stage)
        _mount(None, h, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=64k")
    if shm:  # covers the staging tmpfs and what is left in it
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=1777")
    return notes


def _capset_zero():
    """Drop every capability of this process (effective, permitted, inheritable)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    hdr = Header(0x20080522, 0)
    data = (Data * 2)()
    if _libc.syscall(126, ctypes.byref(hdr), ctypes.byref(data)) != 0:  # SYS_capset (x86_64)
        raise OSError(ctypes.get_errno(), "capset")


def make_preexec(job, uid):
    lim = job["limits"]

    def preexec():
        # Runs in the forked child before exec; the supervisor is single-threaded.
        cpu = max(1, int(lim["cpu_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = lim["memory_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] * 2**20,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"],) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"],) * 2)
        if uid is not None:  # real root: become an unprivileged uid of our own
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        elif os.geteuid() == 0:  # root inside a user namespace: keep uid 0, lose the powers
            _libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_NOROOT, 0, 0, 0)
            for cap in range(64):
                _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
            _capset_zero()
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)

    return preexec


def kill_leftovers(namespaces, pgid, uid):
    """Kill everything the program started. Namespace mode: every process but PID 1."""
    if namespaces:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if uid is not None:  # a daemon may have left the session: find it by uid
            for _ in range(50):
                found = False
                for pid in os.listdir("/proc"):
                    if not pid.isdigit():
                        continue
                    try:
                        st = os.stat(f"/proc/{pid}")
                    except OSError:
                        continue
                    if st.st_uid == uid:
                        found = True
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except OSError:
                            pass
                if not found:
                    break
                time.sleep(0.01)
    while True:  # reap (as PID 1, orphans are ours)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG if not namespaces else 0)
        except ChildProcessError:
            break
        if pid == 0:
            break


def _wait(pid, flags):
    """(exit status as Popen reports it, CPU seconds) once `pid` ended, else None."""
    got, st, ru = os.wait4(pid, flags)
    if got == 0:
        return None
    status = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
    return status, ru.ru_utime + ru.ru_stime


def run_one(job, workdir, stdin_bytes, uid, env, extra_fd_data):
    """One runner process: returns a dict with exit status, capped output and flags."""
    lim = job["limits"]
    cap = lim["output_kb"] * 1024
    if os.path.exists(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir, mode=0o700)
    if uid is not None:
        os.chown(workdir, uid, uid)
    verdict_r = verdict_w = None
    pass_fds = ()
    if extra_fd_data is not None:
        verdict_r, verdict_w = os.pipe()
        pass_fds = (verdict_w,)
    argv = [job["python"], "-I", "-S", job["runner"], job["mode"], job["program_path"], str(verdict_w or -1),
            "audit" if not job["namespaces"] else "-", os.pathsep.join(job["sys_path"]) or "-"]
    import subprocess

    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=env,
            close_fds=True, pass_fds=pass_fds, start_new_session=True, preexec_fn=make_preexec(job, uid),
        )
    except OSError as e:
        for fd in (verdict_r, verdict_w):
            if fd is not None:
                os.close(fd)
        return {"error": f"could not start the runner: {e}"}
    if verdict_w is not None:
        os.close(verdict_w)
    sel = selectors.DefaultSelector()
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "verdict": bytearray()}
    for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ, name)
    if verdict_r is not None:
        os.set_blocking(verdict_r, False)
        sel.register(verdict_r, selectors.EVENT_READ, "verdict")
    pending = memoryview(stdin_bytes)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
    else:
        proc.stdin.close()
    deadline = t0 + lim["wall_s"]
    timed_out = over = False
    exited_at = reaped = None
    while sel.get_map() or reaped is None:  # a program may close its pipes and go on
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if exited_at is None and reaped is None:
            reaped = _wait(proc.pid, os.WNOHANG)
            if reaped is not None:
                exited_at = now
        if exited_at is not None and now - exited_at > 0.2:
            break  # the runner is gone; something it spawned still holds a pipe
        if not sel.get_map():  # pipes closed: wait for the exit status, briefly
            time.sleep(0.001)
            continue
        for key, _ in sel.select(timeout=min(0.05, deadline - now)):
            name = key.data
            if name == "stdin":
                try:
                    n = os.write(key.fd, pending[:65536])
                    pending = pending[n:]
                except (BrokenPipeError, OSError):
                    pending = pending[:0]
                if not pending:
                    sel.unregister(key.fd)
                    proc.stdin.close()
                continue
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fd)
                continue
            bufs[name] += chunk
            if name != "verdict" and len(bufs[name]) > cap:
                over = True
        if over:
            break
    wall = time.monotonic() - t0
    if reaped is None:
        reaped = _wait(proc.pid, os.WNOHANG)
    if reaped is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        reaped = _wait(proc.pid, 0)
    status, cpu = reaped
    proc.returncode = status  # reaped here, with its CPU time (Popen would lose that)
    kill_leftovers(job["namespaces"], proc.pid, uid)
    for f in (proc.stdout, proc.stderr, proc.stdin):
        try:
            f.close()
        except OSError:
            pass
    if verdict_r is not None:
        try:
            while True:
                chunk = os.read(verdict_r, 4096)
                if not chunk or len(bufs["verdict"]) > 4096:
                    break
                bufs["verdict"] += chunk
        except OSError:
            pass
        os.close(verdict_r)
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "returncode": status, "cpu_s": cpu, "timed_out": timed_out, "output_exceeded": over, "wall_s": wall,
        "stdout": bufs["stdout"][:cap].decode("utf-8", "replace"),
        "stderr": bufs["stderr"][-4000:].decode("utf-8", "replace"),
        "verdict": bufs["verdict"][:4096].decode("utf-8", "replace"),
    }


def main():
    job = json.loads(sys.stdin.buffer.read())
    nonce = job["nonce"]
    out = {"nonce": nonce, "notes": [], "results": []}
    try:
        uid = job["uid"] if os.geteuid() == 0 and job["uid"] is not None and not job["userns"] else None
        if job["namespaces"]:
            _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            out["notes"] += build_filesystem(job)
            base = "/tmp"
        else:
            base = job["workdir"]
        # The program and the runner lie in a folder the runner cannot write to.
        code_dir = os.path.join(base, ".k15")
        os.makedirs(code_dir, mode=0o755, exist_ok=True)
        with open(os.path.join(code_dir, "runner.py"), "w") as f:
            f.write(job["runner_source"])
        with open(os.path.join(code_dir, "program.py"), "w") as f:
            f.write(job["program"])
        if job["namespaces"]:
            _mount(code_dir, code_dir, None, MS_BIND)
            _mount(None, code_dir, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        elif uid is not None:
            os.chmod(base, 0o755)
        job["runner"] = os.path.join(code_dir, "runner.py")
        job["program_path"] = os.path.join(code_dir, "program.py")
        workdir = os.path.join(base, "w")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        for item in job["runs"]:
            r = run_one(job, workdir, item["stdin"].encode(), uid, env, item.get("verdict"))
            out["results"].append(r)
            if "error" in r or (job["stop_at_first_failure"] and not _ran_ok(r, item.get("expected"))):
                break
    except Exception as e:  # report, never hang: the host maps this to sandbox_error
        out["error"] = f"{type(e).__name__}: {e}"
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def normalize_output(text):
    """Outputs compare equal up to trailing spaces on lines and trailing blank lines."""
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip("\n")


def _ran_ok(r, expected):
    ok = r.get("returncode") == 0 and not r.get("timed_out") and not r.get("output_exceeded")
    return ok and (expected is None or normalize_output(r["stdout"]) == normalize_output(expected))


if __name__ == "__main__":
    main()
