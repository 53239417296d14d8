"""Sandbox supervisor: the trusted process that runs untrusted programs (report §2.3.5).

Started by `k15rl.verifiers.sandbox` as `python -I -S _sandbox_supervisor.py`, normally
as PID 1 of fresh PID, mount, IPC and network namespaces (`unshare`), and kept running:
it serves one job after another. It imports nothing from k15rl (only the standard
library). Protocol on stdin/stdout, one JSON line each: a set-up line, then per job a
job line answered by one result line tagged with the job's nonce.

Set-up, in namespace mode, builds the only filesystem the programs see, from nothing:
a new root (tmpfs, read-only) holding the system folders (/usr and the /bin, /lib
links), the Python installation, a few device nodes, this namespace's /proc, the
linker's files from /etc, and a size-limited writable /tmp; folders of installed
packages inside the Python installation are covered by empty ones; then `pivot_root`,
and the host's tree is detached. The project, datasets, run folders, home folders and
host sockets are simply not there. Then it starts the runner (`_sandbox_runner.py`) in
zygote mode, which forks every confined process.

Per test: a candidate process runs the program (and, for function-call tests, a judge
process runs the test code against it, over pipes, and writes the verdict to a pipe of
the supervisor's); the supervisor enforces the wall-clock and output limits, then kills
every process but itself and the zygote (looping over /proc until none is left, so
setsid daemons and processes that ignore signals go too) and mounts a fresh /tmp and
/dev/shm. A supervisor that cannot clean up reports an error, and the host replaces it.

Without namespaces (`"namespaces": false`) the same runs in a private working folder;
leftovers are killed by session and (as root) by uid: weaker, see docs/code_rewards.md.
"""

import ctypes
import json
import math
import os
import re
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
# the writable tmpfs mounts of namespace mode: (flags, options); /tmp's size is disk_mb
SCRATCH = {"/tmp": (MS_NOSUID | MS_NODEV, "size={disk_mb}m,mode=1777"),
           "/dev/shm": (MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=1777")}
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
NEW_ROOT = "/tmp/.k15root"
# what a program sees of /etc: the dynamic linker's files and the time zone
ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime")
DEV_NODES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _locked_flags(target):
    """Flags of the mount at `target` that a user namespace may not clear (atime, noexec)."""
    flags = 0
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        if f[4].encode().decode("unicode_escape") == target:
            flags = 0
            for o in f[5].split(","):
                flags |= {"noexec": MS_NOEXEC, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                          "relatime": MS_RELATIME}.get(o, 0)
    return flags


def _bind_ro(src, target):
    """Bind `src` (folder or file) at `target`, read-only, no set-uid, no devices."""
    if os.path.isdir(src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()
    _mount(src, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _locked_flags(target))


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


# The /proc a program sees, first that the kernel mounts: its process folders alone
# (`subset=pid`, Linux 5.8) and none it may not read by ptrace's rules (`hidepid=2`: another
# uid's, an undumpable one's, one with more capabilities; Linux 3.3); else `hidepid=2` alone.
PROC_MOUNTS = (("subset", "subset=pid,hidepid=2"), ("hidepid", "hidepid=2"))
_PROC_FD = []  # namespace mode: the supervisor's own, whole view of this PID namespace's /proc


def _mount_proc(target):
    """A fresh procfs of this PID namespace at `target` (PROC_MOUNTS): without the
    machine-wide files (/proc/stat with its count of forks, loadavg, vmstat, pressure,
    meminfo, the kernel's command line, ...) there is nothing there to read, or to carry
    from one grading to the next; with hidepid a program sees neither the supervisor nor
    the zygote nor the judge. Where the kernel mounts neither (before Linux 3.3, or a
    security module refusing), the namespace's /proc as `unshare` mounted it. Returns which:
    "subset", "hidepid" or "bind" (the host warns when it is not "subset"). The supervisor
    keeps the whole /proc it needs open from before (`_PROC_FD`, `_open_ns_last_pid`)."""
    for name, options in PROC_MOUNTS:
        try:
            _mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
            return name
        except OSError:
            pass
    _mount("/proc", target, None, MS_BIND | MS_REC)
    return "bind"


def _proc_names():
    """The entries of this PID namespace's /proc, as the supervisor sees it: whole, from
    the folder it opened before `pivot_root` (namespace mode), whatever hidepid hides."""
    return os.listdir(_PROC_FD[0] if _PROC_FD else "/proc")


def _proc_read(rel):
    """The text of /proc/`rel` (e.g. "123/stat"), as `_proc_names` sees /proc."""
    if not _PROC_FD:
        with open("/proc/" + rel) as f:
            return f.read()
    with open(rel, opener=lambda path, flags: os.open(path, flags, dir_fd=_PROC_FD[0])) as f:
        return f.read()


def build_root(cfg):
    """The whole filesystem a program sees (namespace mode); ends inside it. Also the
    host's name, which the UTS namespace starts with, is replaced. Returns which /proc the
    programs see (`_mount_proc`)."""
    socket.sethostname("sandbox")
    _open_ns_last_pid()  # before /proc/sys leaves the programs' view, and the supervisor's
    _PROC_FD.append(os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))  # the whole of it, for the supervisor
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(NEW_ROOT, exist_ok=True)
    _mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    r = lambda p: NEW_ROOT + p  # noqa: E731
    for top in sorted(os.listdir("/")):  # merged-/usr links (/bin -> usr/bin) as they are
        if os.path.islink("/" + top) and os.readlink("/" + top).lstrip("/").startswith("usr/"):
            os.symlink(os.readlink("/" + top), r("/" + top))
    _bind_ro("/usr", r("/usr"))
    for p in cfg["keep_paths"]:  # the interpreter and its standard library
        if os.path.exists(p) and not _under(p, "/usr"):
            _bind_ro(p, r(p))
    for name, src in cfg["packages"]:  # importable packages a job asked for (e.g. cyaron)
        _bind_ro(src, r("/.k15/site/" + name))
    for h in cfg["hide_paths"]:  # installed packages, the project: covered by empty folders
        if os.path.isdir(r(h)) and not any(_under(k, h) for k in cfg["keep_paths"]):
            _mount("tmpfs", r(h), "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    for f in ETC_FILES:
        if os.path.isfile("/etc/" + f):
            _bind_ro(os.path.realpath("/etc/" + f), r("/etc/" + f))
    os.makedirs(r("/dev"))
    _mount("tmpfs", r("/dev"), "tmpfs", MS_NOSUID, "size=64k,mode=755")
    for d in DEV_NODES:
        if os.path.exists("/dev/" + d):
            open(r("/dev/" + d), "w").close()
            _mount("/dev/" + d, r("/dev/" + d), None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", r("/dev/" + name))
    os.symlink("/proc/self/fd", r("/dev/fd"))
    os.makedirs(r("/dev/shm"))
    flags, options = SCRATCH["/dev/shm"]
    _mount("tmpfs", r("/dev/shm"), "tmpfs", flags, options.format(disk_mb=cfg["disk_mb"]))
    _mount(None, r("/dev"), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID, "size=64k,mode=755")
    os.makedirs(r("/proc"))
    proc = _mount_proc(r("/proc"))
    os.makedirs(r("/tmp"))
    flags, options = SCRATCH["/tmp"]
    _mount("tmpfs", r("/tmp"), "tmpfs", flags, options.format(disk_mb=cfg["disk_mb"]))
    os.makedirs(r("/.k15/old"), exist_ok=True)
    with open(r("/.k15/runner.py"), "w") as f:
        f.write(cfg["runner_source"])
    if SYS_PIVOT_ROOT is None:
        raise OSError("pivot_root: unknown system call number on this machine")
    _check(_libc.syscall(SYS_PIVOT_ROOT, NEW_ROOT.encode(), r("/.k15/old").encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.k15/old", MNT_DETACH), "umount the host's tree")
    os.rmdir("/.k15/old")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    return proc


class Zygote:
    """The runner in zygote mode: forks confined processes on request."""

    def __init__(self, cfg, runner):
        self.cfg = cfg
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = mine
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen([cfg["python"], "-I", "-S", runner, "zygote", str(theirs.fileno())],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=(theirs.fileno(),), env=env, cwd="/")
        theirs.close()

    def spawn(self, spec, fds, timeout=10.0):
        """Start one confined process; returns its pid (our child: the zygote forks twice)."""
        self.sock.settimeout(timeout)
        socket.send_fds(self.sock, [json.dumps(spec).encode()], list(fds))
        return json.loads(self.sock.recv(4096))["pid"]

    def healthy(self):
        try:
            state = _proc_read(f"{self.proc.pid}/stat").rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state in ("S", "R")

    def close(self):
        try:
            self.proc.kill()
        except OSError:
            pass
        self.sock.close()


def _wait(pid, flags):
    """(exit status as Popen reports it, CPU seconds) once `pid` ended, else None."""
    try:
        got, st, ru = os.wait4(pid, flags)
    except ChildProcessError:
        return -1000, 0.0
    if got == 0:
        return None
    status = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
    return status, ru.ru_utime + ru.ru_stime


def kill_leftovers(cfg, keep, pgid):
    """Kill everything the programs started, until nothing is left, and reap it."""
    if cfg["namespaces"]:  # every process of this PID namespace but `keep`
        for _ in range(1000):
            found = False
            for name in _proc_names():
                if name.isdigit() and int(name) not in keep:
                    found = True
                    try:
                        os.kill(int(name), signal.SIGKILL)
                    except OSError:
                        pass
            _reap(keep)
            if not found:
                return
            time.sleep(0.001)
        raise RuntimeError("processes of the last test survived 1000 rounds of SIGKILL")  # replaced by the host
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    uids = {u for u in (cfg["uid"], cfg["judge_uid"]) if u is not None}
    for _ in range(50):  # a daemon may have left the session: find it by uid (as root)
        found = False
        for name in os.listdir("/proc") if uids else ():
            try:
                if name.isdigit() and os.stat(f"/proc/{name}").st_uid in uids:
                    found = True
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
        _reap(keep)
        if not found:
            break
        time.sleep(0.01)


def _reap(keep):
    while True:  # orphans are ours (PID 1, or the child subreaper)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


_NS_LAST_PID = {}  # "fd": this PID namespace's ns_last_pid, open for writing; "top": the kernel's pid_max


def _open_ns_last_pid():
    """Open ns_last_pid and read pid_max once, while /proc/sys is in view (the sandbox's
    /proc holds process folders alone). A kernel without ns_last_pid
    (CONFIG_CHECKPOINT_RESTORE) leaves the PID counter unscattered: docs/code_rewards.md."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            _NS_LAST_PID["top"] = int(f.read())
        _NS_LAST_PID["fd"] = os.open("/proc/sys/kernel/ns_last_pid", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        _NS_LAST_PID.clear()


def _scatter_pids():
    """Set this PID namespace's next PID at random before each program starts: otherwise a
    program could leave a number in the PID counter (by forking until it reads back what
    it wants) for the next one to read from its own PID, a channel between gradings."""
    if "fd" in _NS_LAST_PID:
        pid = 300 + secrets.randbelow(_NS_LAST_PID["top"] - 301)  # 300: the lowest PID the kernel reuses
        try:
            os.pwrite(_NS_LAST_PID["fd"], str(pid).encode(), 0)
        except OSError:  # as before the fd: a counter the kernel will not set stays as it is
            pass


def _fresh_scratch(cfg):
    """Empty /tmp and /dev/shm by mounting new ones over them (the old ones, detached,
    go once nothing uses them): nothing a program left there, however deep or odd a tree,
    can make emptying them fail."""
    for target, (flags, options) in SCRATCH.items():
        _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")
        _mount("tmpfs", target, "tmpfs", flags, options.format(disk_mb=cfg["disk_mb"]))


def _remove_tree(path):
    """Remove `path` (no namespaces: the working folder) with coreutils' rm, which
    removes trees of any depth (shutil.rmtree recurses once per level and fails on a
    deep one). Raises if anything is left: the supervisor is then replaced."""
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if os.path.lexists(path):
        raise OSError(f"could not remove {path}")


def _oom_first():
    """Make this process, and every process it starts, the kernel OOM killer's first
    choice: programs that together take the machine's memory (up to `processes` x
    `memory_mb` each) are killed before the trainer. Raising the score needs no privilege;
    where /proc does not allow it, the programs keep the default score."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


class Supervisor:
    def __init__(self, cfg):
        self.cfg = cfg
        # first: a process that is not dumpable has its /proc files owned by root, so a
        # supervisor run by an ordinary user could no longer write its own score
        _oom_first()
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        self.proc_view = None  # which /proc the programs see (namespace mode)
        if cfg["namespaces"]:
            self.proc_view = build_root(cfg)
            self.base, runner = "/tmp", "/.k15/runner.py"
        else:
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            self.base = cfg["workdir"]
            code = os.path.join(self.base, ".k15")
            os.makedirs(code, mode=0o755, exist_ok=True)
            runner = os.path.join(code, "runner.py")
            with open(runner, "w") as f:
                f.write(cfg["runner_source"])
            if cfg["uid"] is not None:
                os.chmod(self.base, 0o755)
        self.runner = runner
        self.zygote = Zygote(cfg, runner)
        self.devnull = os.open(os.devnull, os.O_RDWR)

    def _spawn(self, role, job, fds, cwd):
        spec = {"role": role, "mode": job["mode"], "limits": job["limits"], "cwd": cwd,
                "call_limits": job.get("call_limits"),
                "uid": self.cfg["uid"] if role == "candidate" else self.cfg["judge_uid"],
                "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": cwd, "LANG": "C.UTF-8",
                        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"},
                "audit": not self.cfg["namespaces"], "packages": "/.k15/site" if self.cfg["packages"] else ""}
        if not self.cfg["namespaces"] and self.cfg["packages"]:
            spec["packages"] = os.pathsep.join(os.path.dirname(src) for _, src in self.cfg["packages"])
        try:
            if self.cfg["namespaces"]:
                _scatter_pids()
            return self.zygote.spawn(spec, fds)
        finally:
            for fd in fds:
                if fd != self.devnull:
                    os.close(fd)

    def run_one(self, job, stdin_bytes):
        """One test: a candidate (and a judge in function mode). Returns a result dict."""
        lim = job["limits"]
        cap = lim["output_kb"] * 1024
        workdir = os.path.join(self.base, "w")
        _remove_tree(workdir)  # emptied after the last test already: this only checks
        os.makedirs(workdir, mode=0o700)
        if self.cfg["uid"] is not None:
            os.chown(workdir, self.cfg["uid"], self.cfg["uid"])
        function = job["mode"] == "function"
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        prog_r, prog_w = os.pipe()
        fds = [in_r, out_w, err_w, prog_r]
        if function:
            req_r, req_w = os.pipe()
            ans_r, ans_w = os.pipe()
            job_r, job_w = os.pipe()
            verdict_r, verdict_w = os.pipe()
            fds += [req_r, ans_w]
        t0 = time.monotonic()
        pids = {}
        try:
            pids["candidate"] = self._spawn("candidate", job, fds, workdir)
            if function:
                pids["judge"] = self._spawn("judge", job, [self.devnull, self.devnull, self.devnull, job_r, req_w,
                                                             ans_r, verdict_w], "/")
        except (OSError, ValueError, KeyError) as e:
            for fd in (in_w, out_r, err_r, prog_w) + ((job_w, verdict_r) if function else ()):
                os.close(fd)
            self.restart_zygote()
            return {"error": f"could not start the program: {e}"}
        sel = selectors.DefaultSelector()
        bufs = {"stdout": bytearray(), "stderr": bytearray(), "verdict": bytearray()}
        writes = {prog_w: memoryview(job["program"].encode("utf-8", "surrogatepass")), in_w: memoryview(stdin_bytes)}
        if function:
            writes[job_w] = memoryview(json.dumps({k: job.get(k) for k in ("check", "entry_point", "setup")}).encode())
            sel.register(verdict_r, selectors.EVENT_READ, "verdict")
        for fd, data in writes.items():
            os.set_blocking(fd, False)
            if data:
                sel.register(fd, selectors.EVENT_WRITE, "write")
            else:
                os.close(fd)
        for name, fd in (("stdout", out_r), ("stderr", err_r)):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, name)
        deadline = t0 + lim["wall_s"]
        timed_out = over = False
        status = {}  # role -> (exit status, cpu seconds)
        ended_at = judged_at = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            for role, pid in pids.items():
                if role not in status:
                    got = _wait(pid, os.WNOHANG)
                    if got is not None:
                        status[role] = got
            if len(status) == len(pids):
                ended_at = ended_at or now
                if not sel.get_map() or now - ended_at > 0.2:
                    break  # all done (or something they spawned still holds a pipe)
            elif "judge" in status:
                judged_at = judged_at or now
                if now - judged_at > 0.2:
                    break  # the verdict is in; a program that does not exit is stopped here
            if not sel.get_map():
                time.sleep(0.0005)
                continue
            for key, _ in sel.select(timeout=min(0.02, deadline - now)):
                if key.data == "write":
                    data = writes[key.fd]
                    try:
                        writes[key.fd] = data = data[os.write(key.fd, data[:65536]):]
                    except OSError:
                        data = data[:0]
                    if not data:
                        sel.unregister(key.fd)
                        os.close(key.fd)
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    continue
                bufs[key.data] += chunk
                if key.data != "verdict" and len(bufs[key.data]) > cap:
                    over = True
            if over:
                break
        wall = time.monotonic() - t0
        for role, pid in pids.items():
            if role not in status:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                status[role] = _wait(pid, 0)
        if function and "verdict" in [k.data for k in sel.get_map().values()]:
            try:  # whatever the judge wrote before it ended
                while len(bufs["verdict"]) < 4096:
                    chunk = os.read(verdict_r, 4096)
                    if not chunk:
                        break
                    bufs["verdict"] += chunk
            except OSError:
                pass
        for key in list(sel.get_map().values()):
            sel.unregister(key.fd)
            os.close(key.fd)
        sel.close()
        self.clean(pids["candidate"])
        rc, cpu = status["candidate"]
        return {
            "returncode": rc, "cpu_s": cpu, "timed_out": timed_out, "output_exceeded": over, "wall_s": wall,
            "stdout": bufs["stdout"][:cap].decode("utf-8", "replace"),
            "stderr": bufs["stderr"][-4000:].decode("utf-8", "replace"),
            "verdict": bufs["verdict"][:4096].decode("utf-8", "replace") if function else None,
        }

    def clean(self, pgid):
        """Nothing of the last test is left: processes, files, a stopped zygote."""
        kill_leftovers(self.cfg, {os.getpid(), self.zygote.proc.pid}, pgid)
        if not self.zygote.healthy():
            self.restart_zygote()
        if self.cfg["namespaces"]:
            _fresh_scratch(self.cfg)
        else:
            _remove_tree(os.path.join(self.base, "w"))

    def restart_zygote(self):
        self.zygote.close()
        _wait(self.zygote.proc.pid, 0)
        self.zygote = Zygote(self.cfg, self.runner)


def normalize_output(text):
    """Outputs compare equal up to trailing spaces on lines and blank lines at the ends.

    >>> normalize_output("3 \\n4\\n\\n") == normalize_output("3\\n4")
    True
    """
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip("\n")


# A real number as judges' checkers read one: a decimal point or an exponent (an integer
# stays an integer: "3.0" is not "3"); and any number a program may print in its place.
_REAL = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][+-]?[0-9]+)?")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _slack(want, tolerance):
    """How far a printed number may be from the real number written `want`: `tolerance`,
    absolute or relative, but the relative part no more than half a unit in the last
    digit `want` prints or 64 units in the last place of a double there, whichever is
    more (500000 is not 500000.5, though within 1e-6 of it relatively; a float error of
    a few ulps always passes). None for a number past the float range (compared as
    written)."""
    value = float(want)
    if not math.isfinite(value):
        return None
    mantissa, _, exponent = want.lower().partition("e")
    exponent = exponent.lstrip("+")
    # an exponent of more digits than this is past any double's range; int() of a long one is slow
    exp = int(exponent or 0) if len(exponent) <= 7 else (-10**6 if exponent.startswith("-") else 10**6)
    half_unit = 0.5 * 10.0 ** max(-300, min(300, exp - len(mantissa.partition(".")[2])))
    return min(tolerance * max(1.0, abs(value)), max(half_unit, 64 * math.ulp(value), tolerance))


def _close(got, want, tolerance):
    """Whether the word `got` is a number within `_slack` of the real number `want`."""
    slack = _slack(want, tolerance) if _REAL.fullmatch(want) and _NUMBER.fullmatch(got) else None
    return slack is not None and abs(float(got) - float(want)) <= slack


def outputs_match(got, expected, tolerance=0.0, ignore_case=False):
    """Whether a program's output matches the expected output: line by line, up to
    `normalize_output`, and with `ignore_case` up to letter case (problems that accept
    "YES", "Yes" or "yes"). With `tolerance` > 0, a word of the expected output that is a real
    number (a decimal point or an exponent) matches any number within `_slack` of it:
    the usual checker of real-valued answers (absolute or relative error up to
    `tolerance`), the relative part capped near the expected value's printed precision,
    so 0.5 matches 0.500000. Every other word (integers too), and the spaces between
    words, must be equal.

    >>> outputs_match("0.5 3\\n", "0.5000001 3", 1e-6), outputs_match("0.5 3", "0.5001 3", 1e-6)
    (True, False)
    >>> outputs_match("3.0", "3", 1e-6), outputs_match("0.5", "0.500000"), outputs_match("500000", "500000.5", 1e-6)
    (False, False, False)
    >>> outputs_match("0.33333333", "0.3333333333", 1e-6), outputs_match("1.50000001e10", "1.5e10", 1e-6)
    (True, True)
    >>> outputs_match("0", "1e400", 1e-6), outputs_match("1e400", "1e400", 1e-6)
    (False, True)
    >>> outputs_match("1000000000.000002", "1000000000.000000", 1e-6)  # a few ulps
    True
    >>> outputs_match("Yes\\n2.5E-1", "YES\\n0.25", 1e-6), outputs_match("Yes", "YES", 1e-6, ignore_case=True)
    (False, True)
    """
    got, expected = normalize_output(got), normalize_output(expected)
    if ignore_case:
        got, expected = got.lower(), expected.lower()  # not casefold: "ß" is not "ss"
    if got == expected or tolerance <= 0:
        return got == expected
    got_lines, want_lines = got.split("\n"), expected.split("\n")
    if len(got_lines) != len(want_lines):
        return False
    for g, w in zip(got_lines, want_lines):
        gw, ww = re.split(r"(\s+)", g), re.split(r"(\s+)", w)  # words, with the spaces between
        if len(gw) != len(ww):
            return False
        for a, b in zip(gw, ww):
            if a != b and not _close(a, b, tolerance):
                return False
    return True


def _ran_ok(r, item, job):
    """Whether a run passed as far as the supervisor can tell (exit status, limits, and
    the output where the run has an expected one)."""
    ok = r.get("returncode") == 0 and not r.get("timed_out") and not r.get("output_exceeded")
    return ok and ("expected" not in item or outputs_match(r["stdout"], item["expected"], job["float_tolerance"],
                                                                   job.get("ignore_case", False)))


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout
    try:
        sup = Supervisor(json.loads(stdin.readline()))
        stdout.write(json.dumps({"ready": True, "proc": sup.proc_view}) + "\n")
    except Exception as e:  # report, never hang: the host maps this to sandbox_error
        stdout.write(json.dumps({"ready": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        stdout.flush()
        return
    stdout.flush()
    for line in stdin:
        job = json.loads(line)
        out = {"nonce": job["nonce"], "results": []}
        try:
            for item in job["runs"]:
                r = sup.run_one(job, item.get("stdin", "").encode("utf-8", "surrogatepass"))
                out["results"].append(r)
                if "error" in r or (job["stop_at_first_failure"]
                                    and not _ran_ok(r, item, job)):
                    break
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
        stdout.write(json.dumps(out) + "\n")
        stdout.flush()


if __name__ == "__main__":
    main()
