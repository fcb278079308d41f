"""solvers.codes is the one definition of the kind, mode and relaxation codes: no other module
assigns one of its names, and the policy language's names agree with its name tables."""

from __future__ import annotations

import ast
import pathlib
import typing

import solvers.codes as codes
from engine import compile as compile_
from engine.policy import Diversity, SolverSettings
from engine.types import SolverMode

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODE_NAMES = {n for n in vars(codes) if n.isupper()}


def _assigned_names(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for t in targets:
            for leaf in ast.walk(t):
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return names


def test_no_module_defines_a_code_again():
    copies = {}
    for folder in ("solvers", "engine", "server", "tests", "benchmarks", "testing"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "solvers" / "codes.py" or "_gen" in path.parts:
                continue
            again = _assigned_names(path) & CODE_NAMES
            if again:
                copies[str(path.relative_to(ROOT))] = sorted(again)
    assert copies == {}, f"import these from solvers.codes instead: {copies}"


def test_codes_module_imports_nothing():
    tree = ast.parse((ROOT / "solvers" / "codes.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_kind_codes_index_their_names():
    for name in codes.KIND_NAMES:
        assert codes.KIND_NAMES[getattr(codes, name.upper())] == name
    for name in codes.DIV_NAMES:
        assert codes.DIV_NAMES[getattr(codes, "DIV_" + name.upper())] == name


def test_policy_rule_types_map_to_the_kind_of_the_same_name():
    for rule_class, kind in compile_._KIND.items():
        (type_name,) = typing.get_args(rule_class.model_fields["type"].annotation)
        assert codes.KIND_NAMES[kind] == type_name


def test_policy_diversity_methods_and_solver_modes_are_the_codes_names():
    methods = typing.get_args(Diversity.model_fields["method"].annotation)
    assert set(methods) == set(codes.DIV_NAMES) - {"none"}
    assert {m: compile_._DIVERSITY[m] for m in methods} == {m: codes.DIV_NAMES.index(m) for m in methods}
    assert set(typing.get_args(SolverSettings.model_fields["mode"].annotation)) == set(codes.SOLVER_MODES)
    assert set(typing.get_args(SolverMode)) == set(codes.SOLVER_MODES)
