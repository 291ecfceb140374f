"""The package's layout: which part may import which, and the torch-free side that the Snakefile, `steermoe plan`,
`status`, `check`'s key validation and the report stand on."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "steermoe"
# the parts from the ground up; a module may import its own part and any part below it, never one above
FLOORS = (("errors", "fsutil", "metrics", "figures", "snakelock"), ("declare",), ("data", "embedded"), ("model",),
          ("run",), ("report",), ("cli",))
TORCH_FREE = ("errors", "fsutil", "metrics", "figures", "snakelock", "data", "embedded", "declare", "report", "cli",
              "run.launch")
HEAVY = ("torch", "transformers", "deepspeed", "peft")


def part_of(module: str) -> str:
    """steermoe.declare.matrix -> declare; steermoe.errors -> errors."""
    return module.split(".")[1]


def floor_of(part: str) -> int:
    return next(i for i, parts in enumerate(FLOORS) if part in parts)


def modules() -> list[str]:
    return sorted(".".join(("steermoe", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
                  for p in PACKAGE.rglob("*.py"))


def imports_of(module: str) -> set[str]:
    """Every steermoe module a module imports, at its top or inside a function."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steermoe"):
            found |= {node.module} if node.module != "steermoe" else {f"steermoe.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("steermoe.")}
    return found


def test_every_module_belongs_to_a_part_of_the_layout():
    assert {part_of(m) for m in modules() if m != "steermoe"} <= {p for parts in FLOORS for p in parts}


@pytest.mark.parametrize("module", [m for m in modules() if m != "steermoe"])
def test_no_module_imports_a_part_above_its_own(module):
    upward = {i for i in imports_of(module) if floor_of(part_of(i)) > floor_of(part_of(module))}
    assert not upward, f"{module} imports {sorted(upward)}, which sit above it"


def test_the_torch_free_side_imports_no_torch_transformers_or_deepspeed():
    chosen = [m for m in modules() if any(m == f"steermoe.{p}" or m.startswith(f"steermoe.{p}.") for p in TORCH_FREE)
              and not m.startswith("steermoe.embedded.")]  # the converters under embedded/ run only on import
    assert "steermoe.declare.matrix" in chosen and "steermoe.report.plan" in chosen
    code = ("import importlib, sys\n"
            f"for m in {chosen!r}: importlib.import_module(m)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_trainer_is_used_with_the_transformers_range_its_private_overrides_were_written_for():
    import inspect
    import tomllib

    import transformers
    from packaging.specifiers import SpecifierSet
    from transformers import Trainer

    from steermoe.run.trainer import TRANSFORMERS_RANGE, SteerMoETrainer

    tested = SpecifierSet(",".join(TRANSFORMERS_RANGE))
    assert transformers.__version__ in tested, f"transformers {transformers.__version__} is outside {tested}"
    declared = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    (pinned,) = [d for d in declared if d.startswith("transformers")]
    assert SpecifierSet(pinned.removeprefix("transformers")) == tested
    overridden = [name for name in vars(SteerMoETrainer) if name.startswith("_") and not name.startswith("__")]
    assert len(overridden) == 8
    for name in overridden:  # each still exists in the Trainer, taking the same arguments
        ours, theirs = inspect.signature(getattr(SteerMoETrainer, name)), inspect.signature(getattr(Trainer, name))
        assert list(ours.parameters) == list(theirs.parameters), name


def test_every_model_option_is_one_setting_of_the_table_and_one_field_of_the_model_config():
    from dataclasses import fields

    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.declare.settings import MODEL_OPTIONS

    assert {f.name for f in fields(SteerMoEConfig)} == set(MODEL_OPTIONS)
    defaults = SteerMoEConfig()
    for option, key in MODEL_OPTIONS.items():  # the field's default is the table's; these two have their own rule
        if option not in ("method", "lora_target_modules"):  # the file name's prefix; empty: attention + FFN
            assert getattr(defaults, option) == key.default, option
