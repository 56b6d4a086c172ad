"""Static checks of ppgmm's layering: import circles, private imports, long functions.

Usage: ``python studies/check_architecture.py [PACKAGE_DIR]`` (default ``ppgmm``). Prints the
three findings and exits with status 1 when any is non-empty.

- Import circles: strongly connected components of the module import graph; imports inside
  functions count, imports under ``if TYPE_CHECKING`` do not.
- Private imports: ``from module import _name`` of another module's private name (dunder
  names such as ``__version__`` are public).
- Long functions: bodies longer than 80 lines of code (docstring, blank and comment lines
  excluded).
"""

from __future__ import annotations

import ast
import os
import sys

MAX_LINES = 80


def modules(root: str) -> dict[str, str]:
    """Dotted module name -> file path for every ``.py`` file under ``root``."""
    out = {}
    base = os.path.dirname(os.path.abspath(root))
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                mod = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                out[mod.removesuffix(".__init__")] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _target(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, source: list[str]) -> int:
    body = node.body
    first = body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        body = body[1:]
    if not body:
        return 0
    lines = source[body[0].lineno - 1: node.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def scan(mods: dict[str, str]):
    """The import graph, the private imports and the long functions of ``mods``."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private, long = [], []
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        tree, source = ast.parse(text), text.splitlines()
        package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                target = _target(node, package)
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    dest = full if full in mods else target
                    if dest in mods and dest != mod:
                        graph[mod].add(dest)
                    is_private = alias.name.startswith("_") and not alias.name.endswith("__")
                    if is_private and dest == target and target in mods and target != mod:
                        private.append((mod, full))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.name != mod:
                        graph[mod].add(alias.name)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _body_lines(node, source)
                if n > MAX_LINES:
                    long.append((mod, node.name, n))
    return graph, private, long


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def main(argv: list[str]) -> int:
    graph, private, long = scan(modules(argv[1] if len(argv) > 1 else "ppgmm"))
    cyc = circles(graph)
    print("import circles:", cyc or "none")
    print("private imports:", private or "none")
    print(f"functions over {MAX_LINES} lines:", long or "none")
    return 1 if (cyc or private or long) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
