"""Imports point one way (DESIGN.md, Layers): the core never loads baselines/, agents/ or the
heavy optional packages until a scheduler that needs them is made."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout.split()
    return {m.split(".")[0] for m in out}


def test_importing_the_core_and_making_fcfs_loads_nothing_heavy():
    mods = _modules_after("import llmsched_env\nfrom llmsched_env import make_scheduler, available_schedulers\n"
                          "make_scheduler('fcfs'); make_scheduler('sarathi'); available_schedulers()")
    for heavy in ("ortools", "torch", "onnxruntime", "agents", "stable_baselines3", "vllm", "ray"):
        assert heavy not in mods, heavy


def test_the_learned_policy_needs_numpy_not_torch():
    mods = _modules_after("from llmsched_env import make_scheduler\nmake_scheduler('ppo')")
    assert "agents" in mods and "torch" not in mods and "ortools" not in mods


def test_every_builtin_name_resolves_to_its_registered_class():
    from llmsched_env.scheduler import BUILTIN, scheduler_class
    for name in BUILTIN:
        assert scheduler_class(name).name == name


def test_the_profiler_is_a_tool_nothing_imports():
    """profiling writes the measurement format that measured.py owns; no other module loads it."""
    mods = _modules_after("import llmsched_env.measured, llmsched_env.presets, llmsched_env.cli\n"
                          "from llmsched_env.presets import get_preset; get_preset('h100-llama3-8b')")
    out = subprocess.run([sys.executable, "-c", "import llmsched_env.measured, llmsched_env.presets, sys\n"
                          "print('llmsched_env.profiling' in sys.modules)"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert out == "False" and "torch" not in mods


def _package_imports(pkg: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere (function-level imports included)."""
    import ast
    mods = {f.stem for f in pkg.glob("*.py")}
    graph = {}
    for f in pkg.glob("*.py"):
        deps = set()
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                deps.update([n.module.split(".")[0]] if n.module else [a.name for a in n.names])
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith(pkg.name):
                rest = n.module[len(pkg.name):].lstrip(".")
                deps.update([rest.split(".")[0]] if rest else [a.name for a in n.names])
            elif isinstance(n, ast.Import):
                deps.update(a.name.split(".")[1] for a in n.names if a.name.startswith(pkg.name + "."))
        graph[f.stem] = (deps & mods) - {f.stem}
    return graph


def test_the_core_package_has_no_import_cycle():
    """Not even through a function-level import (presets <-> measured was one)."""
    graph = _package_imports(ROOT / "llmsched_env")
    assert "presets" in graph["calibrate_measured"] and "presets" not in graph["measured"]
    done: set[str] = set()

    def visit(mod: str, path: list[str]) -> None:
        if mod in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(mod):] + [mod]))
        if mod not in done:
            for dep in sorted(graph[mod]):
                visit(dep, path + [mod])
            done.add(mod)

    for mod in sorted(graph):
        visit(mod, [])
