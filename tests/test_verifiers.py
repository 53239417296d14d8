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
