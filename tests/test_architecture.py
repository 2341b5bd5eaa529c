"""House rules the code itself can show: no import cycle between any two modules (the layers and sibling
packages are checked by import-linter's contracts in pyproject.toml, run by ``make test``), and every log
event named by a constant of :mod:`vitals_agent.log_events` in one dotted style, listed in the README."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp

import vitals_agent
from vitals_agent import log_events


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.d")
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_cycle_between_modules() -> None:
    """Counting every import: at module level, inside functions and under ``TYPE_CHECKING``."""
    graph = grimp.build_graph("vitals_agent", exclude_type_checking_imports=False)
    assert import_cycles(graph) == []


LOG_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
EVENT_NAME = re.compile(r"[a-z][a-z0-9]*(?:\.[a-z0-9_]+)+")


def test_log_event_names_are_dotted_and_unique() -> None:
    names = {k: v for k, v in vars(log_events).items() if k.isupper()}
    assert names, "vitals_agent.log_events defines no event"
    assert [v for v in names.values() if not EVENT_NAME.fullmatch(v)] == []
    assert len(set(names.values())) == len(names)
    assert all(k == v.upper().replace(".", "_") for k, v in names.items())  # the constant says the name


def _is_log_method(func: ast.expr) -> bool:
    """``log.info``, ``self.runtime.log.warning``, or a level chosen at run time:
    ``(log.warning if first else log.info)``."""
    if isinstance(func, ast.IfExp):
        return _is_log_method(func.body) or _is_log_method(func.orelse)
    return (
        isinstance(func, ast.Attribute)
        and func.attr in LOG_LEVELS
        and "log" in ast.unparse(func.value).lower()
    )


def test_every_log_call_names_its_event_with_a_constant() -> None:
    """``log.info(ev.DEVICE_CONNECTED, ...)``, never a free-text event: people alert on these names."""
    package = Path(vitals_agent.__file__).parent
    wrong: list[str] = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not (isinstance(node, ast.Call) and node.args and _is_log_method(node.func)):
                continue
            event = node.args[0]
            named = (
                isinstance(event, ast.Attribute)
                and isinstance(event.value, ast.Name)
                and event.value.id == "ev"
                and hasattr(log_events, event.attr)
            )
            if not named:
                wrong.append(f"{path.relative_to(package)}:{node.lineno}: {ast.unparse(event)}")
    assert wrong == []


def test_the_readme_lists_every_log_event() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    section = readme.split("\n## Log events\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", section, re.M))
    names = {v for k, v in vars(log_events).items() if k.isupper()}
    assert names - listed == set(), "add them to the README's log events table"
    assert listed - names == set(), "the README lists events the agent no longer logs"
