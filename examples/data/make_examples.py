"""Writes the example prompt sets in this folder (run from anywhere; needs pyarrow).

    python examples/data/make_examples.py

Four layouts of the same kind of data, each loadable with `data.train_files=[FILE]`:

- math.jsonl       plain rows: problem, answer, difficulty, domain. It also holds a few
                   multiple-choice, true/false and proof questions and one duplicate, so
                   `k15rl curate` and the duplicate report have something to find.
- trl_chat.jsonl   TRL's conversational layout: `prompt` is a list of chat messages and
                   `solution` a worked solution ending in \\boxed{}.
- verl.parquet     verl's layout: `prompt` (chat list), `reward_model.ground_truth`,
                   `data_source`, `ability`, `extra_info`.
- problems.csv     a spreadsheet export: question, answer, level ("Level N"), subject.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).parent

# (problem, answer, difficulty 1-3, domain)
PROBLEMS = [
    ("What is 17 + 25?", "42", 1, "arithmetic"),
    ("What is 12 * 13?", "156", 1, "arithmetic"),
    ("Compute 2^10.", "1024", 1, "arithmetic"),
    ("What is 144 divided by 12?", "12", 1, "arithmetic"),
    ("Simplify the fraction 18/24.", "\\frac{3}{4}", 1, "arithmetic"),
    ("Solve for x: 3x + 5 = 20.", "5", 1, "algebra"),
    ("Solve for x: 2x - 7 = 11.", "9", 1, "algebra"),
    ("Factor a^2 - 4.", "(a-2)(a+2)", 2, "algebra"),
    ("What is the sum of the roots of x^2 - 5x + 6 = 0?", "5", 2, "algebra"),
    ("If f(x) = 2x^2 - 3, what is f(4)?", "29", 2, "algebra"),
    ("Solve for y: y/3 + 4 = 10.", "18", 1, "algebra"),
    ("What is the least common multiple of 6 and 8?", "24", 1, "number theory"),
    ("What is the greatest common divisor of 84 and 120?", "12", 2, "number theory"),
    ("How many positive divisors does 36 have?", "9", 2, "number theory"),
    ("What is the remainder when 2^20 is divided by 7?", "4", 3, "number theory"),
    ("What is the area of a rectangle with sides 7 and 9?", "63", 1, "geometry"),
    ("A right triangle has legs 6 and 8. How long is its hypotenuse?", "10", 1, "geometry"),
    ("What is the sum of the interior angles of a hexagon, in degrees?", "720", 2, "geometry"),
    ("A circle has radius 3. What is its area? Give the answer in terms of pi.", "9\\pi", 2, "geometry"),
    ("How many ways can 5 different books be arranged on a shelf?", "120", 2, "counting"),
    ("How many 2-element subsets does a 6-element set have?", "15", 2, "counting"),
    ("A fair coin is tossed 3 times. What is the probability of exactly 2 heads?", "\\frac{3}{8}", 3, "counting"),
    ("What is the sum of the integers from 1 to 100?", "5050", 2, "arithmetic"),
    ("Find the positive x with x^2 = 2x + 15.", "5", 3, "algebra"),
]
# Rows that `k15rl curate` drops (report §2.1), and one duplicate.
CURATE_CASES = [
    ("What is 7 * 8?\n(A) 54\n(B) 56\n(C) 58\n(D) 64", "B", 1, "arithmetic"),
    ("Which of the following is prime: 21, 23, 25?", "23", 1, "number theory"),
    ("True or false: 1 is a prime number.", "false", 1, "number theory"),
    ("Is 91 a prime number?", "no", 1, "number theory"),
    ("Prove that the square root of 2 is irrational.", "proof", 3, "number theory"),
    ("Show that the sum of two odd integers is even.", "proof", 2, "number theory"),
    ("What is 17 + 25?", "42", 1, "arithmetic"),
]


def math_jsonl() -> None:
    with open(HERE / "math.jsonl", "w") as f:
        for i, (q, a, d, dom) in enumerate(PROBLEMS + CURATE_CASES):
            f.write(json.dumps({"id": f"m{i:03d}", "problem": q, "answer": a, "difficulty": d, "domain": dom}) + "\n")


def trl_chat_jsonl() -> None:
    with open(HERE / "trl_chat.jsonl", "w") as f:
        for q, a, _, _ in PROBLEMS[:12]:
            row = {"prompt": [{"role": "user", "content": q}],
                   "solution": f"Working it out step by step gives \\boxed{{{a}}}."}
            f.write(json.dumps(row) + "\n")


def verl_parquet() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    system = "Think step by step, then give the final answer on a last line 'answer: <answer>'."
    rows = [{
        "data_source": f"k15rl-examples/{dom}",
        "prompt": [{"role": "system", "content": system}, {"role": "user", "content": q}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": a},
        "extra_info": {"split": "train", "index": i},
    } for i, (q, a, _, dom) in enumerate(PROBLEMS)]
    pq.write_table(pa.Table.from_pylist(rows), HERE / "verl.parquet")


def problems_csv() -> None:
    with open(HERE / "problems.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "level", "subject"])
        for q, a, d, dom in PROBLEMS:
            w.writerow([q, a, f"Level {d}", dom])


if __name__ == "__main__":
    math_jsonl()
    trl_chat_jsonl()
    verl_parquet()
    problems_csv()
    print(f"wrote the examples to {HERE}")
