#!/usr/bin/env python3
"""Fails when the library's modules import each other in a cycle or against the layers.

The library's layers, lowest first: domain -> aws -> gate (and meter, license, doctor) -> outcome. A
module may use modules of its own layer or below, never above, and the module graph must have
no cycle. The command line (src/main.rs, src/cli/) is the binary crate: the library must not
reach it, nor use clap or tracing-subscriber.

    python3 .ci/check_layers.py            # check; exit 1 on a violation
    python3 .ci/check_layers.py --graph    # also print every arrow
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERS = {"domain": 0, "aws": 1, "local_http": 1, "gate": 2, "meter": 2, "license": 2, "doctor": 2, "outcome": 3}
BINARY_ONLY = ("clap", "tracing_subscriber", "signal_hook")


def library_files():
    for path in sorted(SRC.rglob("*.rs")):
        relative = path.relative_to(SRC)
        if relative.parts[0] in ("main.rs", "cli", "bin"):
            continue
        yield path, module_of(relative)


def module_of(relative):
    parts = list(relative.with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


MODULES = {module for _, module in library_files()}


def resolve(path):
    """The longest prefix of `path` that names a library module."""
    for end in range(len(path), 0, -1):
        if tuple(path[:end]) in MODULES:
            return tuple(path[:end])
    return None


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def expand(tree):
    """`a::{b, c::{d, self}}` into ['a::b', 'a::c::d', 'a::c']."""
    tree = tree.strip()
    match = re.match(r"^(.*?)::\{(.*)\}$", tree, flags=re.S)
    if not match:
        return [re.sub(r"\s+as\s+\w+$", "", tree)]
    prefix, inner = match.groups()
    items, depth, current = [], 0, ""
    for char in inner:
        if char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        depth += char == "{"
        depth -= char == "}"
        current += char
    items.append(current)
    paths = []
    for item in filter(str.strip, items):
        for sub in expand(item):
            paths.append(prefix if sub == "self" else f"{prefix}::{sub}")
    return paths


def references(module, text):
    """Library modules `module` refers to, through `crate::` and `super::` paths."""
    found = set()
    paths = []
    for use in re.findall(r"\buse\s+([^;]+);", text):
        paths.extend(expand(use))
    paths.extend(re.findall(r"\bcrate(?:::\w+)+", text))
    for path in paths:
        parts = [p.strip() for p in path.split("::")]
        if parts[0] == "crate":
            target = resolve(parts[1:])
        elif parts[0] == "super":
            base = list(module)
            while parts and parts[0] == "super":
                base = base[:-1]
                parts = parts[1:]
            target = resolve(base + parts)
        else:
            continue
        # A parent module only declares its children (mod.rs), so an arrow to an ancestor, as
        # from `use super::*` in a nested test module, is no dependency.
        is_ancestor = target is not None and module[: len(target)] == target
        if target and not is_ancestor and target[: len(module)] != module:
            found.add(target)
    return found


def layer(module):
    return LAYERS.get(module[0]) if module else None


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def main():
    name = lambda module: "::".join(module) or "crate"
    graph, problems = {}, []
    for path, module in library_files():
        text = strip_comments(path.read_text())
        graph[module] = references(module, text)
        for crate in BINARY_ONLY:
            if re.search(rf"\b{crate}::", text):
                problems.append(f"{path.relative_to(SRC)} uses {crate}, which belongs to the binary")
        if re.search(r"\bcrate::cli\b", text):
            problems.append(f"{path.relative_to(SRC)} reaches into the command line")
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(source) is not None and layer(target) is not None and layer(target) > layer(source):
                problems.append(f"upward arrow: {name(source)} -> {name(target)}")
    for component in cycles(graph):
        problems.append("cycle: " + " <-> ".join(sorted(map(name, component))))
    if "--graph" in sys.argv:
        for source, targets in sorted(graph.items()):
            if targets:
                print(f"{name(source)} -> {', '.join(sorted(map(name, targets)))}")
    edges = sum(len(targets) for targets in graph.values())
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print(f"layers: {len(problems)} problem(s) in {len(graph)} modules", file=sys.stderr)
        return 1
    print(f"layers OK: {len(graph)} modules, {edges} arrows, no cycle, none upward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
