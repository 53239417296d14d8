"""The import rules and shape of docs/architecture.md, checked on the source."""

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "k15rl"
BELOW_TRAINER = ["models", "rewards", "rollout", "tasks", "data", "sampling", "algorithms"]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("part", BELOW_TRAINER)
def test_no_part_below_the_trainer_imports_it(part):
    offenders = {str(f.relative_to(PKG)): sorted(m for m in imported_modules(f) if m.startswith("k15rl.trainer"))
                 for f in (PKG / part).rglob("*.py")}
    assert not {f: m for f, m in offenders.items() if m}


def test_the_loop_does_not_import_the_distributed_backend():
    assert not [m for m in imported_modules(PKG / "trainer" / "loop.py") if m.startswith("k15rl.distributed")]


def test_train_is_short_and_reaches_the_loss_in_two_calls():
    from k15rl.trainer import loop, update

    assert len(inspect.getsource(loop.train).splitlines()) <= 120
    assert "workers.trainer.update(" in inspect.getsource(loop.train)
    # PolicyTrainer.update calls the loss itself, and it is the only place the loss is called
    def loss_calls(source: str) -> int:
        return sum(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "loss_fn"
                   for n in ast.walk(ast.parse(source)))

    assert loss_calls(Path(update.__file__).read_text()) == 1
    assert loss_calls(textwrap.dedent(inspect.getsource(update.PolicyTrainer.update))) == 1


def test_importing_the_losses_needs_torch_alone():
    code = ("import sys, k15rl.algorithms; heavy = {'ray', 'vllm', 'transformers', 'datasets', 'pyarrow', 'peft'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("part", ["tasks", "verifiers"])
def test_tasks_and_verifiers_do_not_import_the_rewards(part):
    offenders = {str(f.relative_to(PKG)): sorted(m for m in imported_modules(f) if m.startswith("k15rl.rewards"))
                 for f in (PKG / part).rglob("*.py")}
    assert not {f: m for f, m in offenders.items() if m}


def test_verifiers_import_nothing_of_k15rl_but_types():
    for f in (PKG / "verifiers").rglob("*.py"):
        assert {m for m in imported_modules(f) if m.startswith("k15rl")} <= {"k15rl.types"} | {
            m for m in imported_modules(f) if m.startswith("k15rl.verifiers")}, f


def test_importing_the_tasks_loads_no_reward_module_nor_torch():
    code = ("import sys, k15rl.tasks; print(sorted(m for m in sys.modules if m.startswith('k15rl.rewards') "
            "or m.startswith('k15rl.verifiers.') and m != 'k15rl.verifiers.answers' or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_config_imports_no_registry():
    """config.py is at the bottom: string choices are Literal types, names that
    registries resolve are checked by trainer/resolve.py::check_names."""
    assert {m for m in imported_modules(PKG / "config.py") if m.startswith("k15rl")} == {"k15rl.errors"}
