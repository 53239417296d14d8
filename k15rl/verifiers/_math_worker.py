"""Math-verify worker: compares a response's final answer with the reference answer in a
process of its own (report §2.3.5, the math reward), so that a response can neither hang
nor exhaust the trainer.

Started by `k15rl.verifiers.math_pool` as `python -I _math_worker.py MEMORY_MB`. It sets
its own memory limit, imports math-verify, says it is ready, then answers one JSON line
per request on stdin: {"gold": ..., "pred": ..., "timeout": seconds} ->
{"equal": bool} or {"error": text}. Why a process: an answer such as 9^{9^{9^9}} makes
sympy compute for ever inside C code, which neither math-verify's own time limit
(`signal.alarm`, main thread only, and only between bytecodes) nor a thread can stop; the
host kills this process instead and starts another.
"""

import json
import resource
import sys


def main() -> None:
    memory_mb = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    try:  # under memory pressure the kernel kills this process before the trainer
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    out = sys.stdout
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except BaseException as e:  # not installed or broken: say so instead of "ready"
        out.write(json.dumps({"error": f"cannot import math_verify: {type(e).__name__}: {e}"}) + "\n")
        out.flush()
        return
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        # a CPU-time limit per request: a computation the host has stopped waiting for ends
        # even when the host died before it could kill this process (SIGXCPU)
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu = int(used.ru_utime + used.ru_stime + req["timeout"]) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
        # math-verify's own limits (SIGALRM, this process's main thread) end most slow cases
        # with a "not equal"; the host's wall-clock kill is the backstop for the rest
        limit = max(1, int(req["timeout"] / 3))
        try:
            gold = parse(f"${req['gold']}$", extraction_config=configs, parsing_timeout=limit)
            pred = parse(f"${req['pred']}$", extraction_config=configs, parsing_timeout=limit)
            reply = {"equal": bool(gold and pred and verify(gold, pred, timeout_seconds=limit))}
        except Exception as e:  # MemoryError past the limit included
            reply = {"error": f"{type(e).__name__}: {e}"[:2000]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
