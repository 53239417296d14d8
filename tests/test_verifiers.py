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
                # a symbolic reference: against a number, an unworked expression is refused before sympy
                ex.submit(verify_math, f"answer: {huge}", "x + 1", 1.0).result()
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
    assert open(f"/proc/{worker.proc.pid}/oom_score_adj").read().strip() == "1000"
    math_pool.shutdown()
    assert worker.proc.poll() is not None


def test_reading_the_answer_takes_linear_time():
    """Responses that made the old patterns backtrack (cubic or quadratic time, the GIL held
    throughout, so no reward time limit could stop it: 137 s for the first at 4,000
    spaces): each is read in well under a second at 100,000 characters."""
    import time

    cases = ["The answer is 7" + " " * 100_000 + "apples", "3+4=7\n" + "\n" * 100_000,
             "3+4=7\n" + "\n" * 100_000 + "so 7\nanswer: 7", " \n" * 50_000 + "answer: 7",
             "answer: 7" + " " * 100_000 + ".", "\\boxed{" * 20_000]
    for text in cases:
        t0 = time.monotonic()
        extract_answer(text)
        assert time.monotonic() - t0 < 1.0, repr(text[:40])
    assert extract_answer(cases[2]) == "7" and extract_answer(cases[3]) == "7"


def test_a_question_copied_as_the_answer_is_not_a_number():
    """Against a numeric reference, math-verify would evaluate an expression the response
    left undone; such answers score wrong (a policy learns to copy the question)."""
    copied = [(r"17 \times 23", "391"), (r"1234 \cdot 5678", "7006652"), (r"\sum_{k=1}^{100} k", "5050"),
              (r"\binom{10}{3}", "120"), (r"\int_0^1 x^2 \, dx", r"\frac{1}{3}"), (r"\gcd(84, 120)", "12"),
              ("10!", "3628800"), (r"\log_2 1024", "10"), ("(48 - 12) / 4 + 7", "16")]
    for got, ref in copied:
        assert not verify_math(f"answer: {got}", ref), got
    worked = [("391", "391"), ("1,234", "1234"), (r"\frac{2}{4}", "0.5"), ("x = 5", "5"), (r"50\%", "50"),
              (r"3 \text{ cm}", "3"), (r"-\frac{1}{3}", r"-\frac{1}{3}"), (r"\sqrt{8}", r"2\sqrt{2}")]
    for got, ref in worked:
        assert verify_math(f"answer: {got}", ref), got


def test_two_numbers_are_not_one_integer():
    assert not verify_integer("answer: 3, 4", "34") and not verify_integer("answer: 3 4", "34")
    assert not verify_integer("answer: 1,2,3,4", "1234") and verify_integer("answer: 1,234", "1234")


def test_the_answer_given_last_counts():
    assert not verify_integer("answer: 7\nwait, 3+4 = 8, so \\boxed{8}", "7")
    assert verify_integer("\\boxed{8}\nno.\nanswer: 7", "7")
    assert verify_integer("\\boxed{7} and later an unclosed \\boxed{", "7")


def test_common_final_answer_formats():
    for text in ("**Answer:** 7", "### Answer: 7", "Answer: $7$", "Answer: \\boxed{7}", "The answer is **7**.",
                 "Final Answer: The final answer is $\\boxed{7}$. I hope it is correct.", "answer: 7.",
                 "Answer:\n\\[\n\\boxed{7}\n\\]", "answer:\n\n 7", "> **Final answer**: 7"):
        assert verify_integer(text, "7"), text
    assert verify_math("**Final Answer:** $\\frac{1}{2}$", "0.5") and verify_math("answer: \\[4\\]", "4")


def test_numbers_written_with_units_wrappers_or_notation_count():
    for got, ref in [(r"1.5 \times 10^3", "1500"), (r"12\text{ m}^2", "12"), (r"4\,\mathrm{cm}^2", "4"),
                     (r"\textbf{10}", "10"), (r"\mathbf{5}", "5"), (r"\text{3}", "3"), ("5°", "5"), ("(3)", "3"),
                     ("- 5", "-5"), (r"5\ \text{cm}", "5"), ("a_1 = 5", "5")]:
        assert verify_math(f"answer: {got}", ref), got
    assert not verify_math("answer: 782/2", "391") and not verify_math(r"answer: \frac{782}{2}", "391")  # undone


def test_two_delimited_answers_are_not_one():
    assert not verify_math(r"answer: $$\sqrt{3}$$ or $$\sqrt{2}$$", r"\sqrt{2}")
    assert not verify_math(r"answer: $$2\pi$$, $$\pi$$", r"\pi")


def test_answer_on_the_next_line_and_empty_boxes():
    assert extract_answer("The answer is:\n42") == "42" and extract_answer("So the final answer is\n\n42.") == "42"
    assert extract_answer("Answer: 5\n\\boxed{}") == "5" and verify_integer("\\boxed{5.}", "5")
