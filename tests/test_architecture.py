"""The package layout holds: imports point one way (robot side <- learning side <- classifiers), no
module imports itself back through others (function-level and TYPE_CHECKING imports included), and no
code outside the guard clips to a safety box."""

import pathlib
import subprocess
import sys

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("robot_servers", "serl", "reward_classifiers")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=False)


def _strongly_connected(modules, imports) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other in a circle."""
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(imports[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(imports[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def test_the_import_contracts_hold():
    lint_imports = pathlib.Path(sys.executable).parent / "lint-imports"  # import-linter's command, beside python
    result = subprocess.run([str(lint_imports), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_import_cycles_hidden_or_not(graph):
    modules = sorted(graph.modules)
    imports = {module: sorted(graph.find_modules_directly_imported_by(module)) for module in modules}
    assert _strongly_connected(modules, imports) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _strongly_connected(["a", "b", "c"], {"a": ["b"], "b": ["c"], "c": ["a"]}) == [["a", "b", "c"]]


def test_only_the_guard_clips_to_the_safety_box():
    clippers = [path.relative_to(ROOT).as_posix() for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                if "safety_box.clip(" in path.read_text() or "box.clip(" in path.read_text()]
    assert clippers == ["robot_servers/guard.py"]
