"""Verifiers: the tricky cases beyond their doctests."""

from k15rl.verifiers import extract_answer, verify_integer, verify_math


def test_last_answer_line_wins():
    assert extract_answer("answer: 3\nwait, no.\nanswer: 4") == "4"
    assert verify_integer("answer: 3\nanswer: 4", "4")
    assert not verify_integer("answer: 4\nanswer: 3", "4")


def test_integer_formats():
    assert verify_integer("answer: +12", "12")
    assert verify_integer("Answer: 12.", "12")
    assert not verify_integer("answer: twelve", "12")
    assert not verify_integer("answer:", "12")
    assert not verify_integer("", "12")


def test_math_equivalences():
    assert verify_math(r"answer: \frac{3}{6}", r"\frac{1}{2}")
    assert verify_math(r"The result is \boxed{2\sqrt{2}}", r"\sqrt{8}")
    assert verify_math("answer: x^2-4", "(x-2)(x+2)")
    assert not verify_math("answer: x^2+4", "(x-2)(x+2)")
    assert verify_math(r"\boxed{\{1,2\}}", r"\{2,1\}")


def test_math_works_outside_the_main_thread():
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        assert ex.submit(verify_math, "answer: 1/2", "0.5").result()


def test_integer_past_pythons_digit_limit_is_a_wrong_answer():
    assert not verify_integer("answer: " + "9" * 5000, "12")  # int() refuses > 4,300 digits


def test_math_answers_that_never_finish_time_out_and_free_their_worker():
    """A final answer that keeps sympy in one C-level power for ever (math-verify's own
    SIGALRM limit cannot stop it, and works in the main thread only) raises TimeoutError
    after the limit, from a worker thread; the worker process is killed, the next call
    gets a fresh one."""
    import concurrent.futures
    import time

    import pytest

    from k15rl.verifiers import math_pool

    verify_math("answer: 1", "1")  # a worker started: its start-up is not part of the timing
    for huge in ("9^{9^{9^{9}}}", "2^{2^{40}}", "99999999999!"):
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match="did not compare"):
                ex.submit(verify_math, f"answer: {huge}", "4", 1.0).result()
            assert time.monotonic() - t0 < 5.0
    killed = [w.proc for w in math_pool._idle]
    assert verify_math(r"answer: \frac{2}{4}", "0.5") and verify_math("answer: 3", "3")
    assert all(p.poll() is None for p in killed)  # the idle ones are live workers


def test_math_workers_have_a_memory_limit_and_their_own_session(monkeypatch):
    """A worker's address space is capped (an answer that builds a huge number fails in
    the worker, not in the trainer), and Ctrl-C in the trainer's terminal does not reach it."""
    import os

    from k15rl.verifiers import math_pool

    monkeypatch.setattr(math_pool, "_idle", [])
    monkeypatch.setattr(math_pool, "MEMORY_MB", 1024)
    assert math_pool.math_equal("4", "2+2")
    (worker,) = math_pool._idle
    limits = open(f"/proc/{worker.proc.pid}/limits").read()
    assert f"Max address space         {1024 << 20}" in limits, limits
    assert os.getsid(worker.proc.pid) == worker.proc.pid != os.getsid(0)
    math_pool.shutdown()
    assert worker.proc.poll() is not None
