"""The package's import plan, read from its source with ast, so that it stays as README's layout
section describes it:

- no import circles, but model <-> functional (Keras's own pair: keras.Model(inputs=...,
  outputs=...) is a functional model, and a functional model is a Model); the image reader's
  module preprocessing/image.py offers Keras's ImageDataGenerator and iterators from
  generator.py and iterators.py, which read images with it (Keras's import path
  keras.preprocessing.image), the one other circle left;
- the file readers and writers (formats/) and the image pipeline (preprocessing/) import neither
  the model, the functional model nor training;
- covidx's modules are imported inside functions only to break the model <-> functional circle
  (and within that image pipeline circle).

Every import counts, at module level or inside a function: `from . import x` is an import of the
module x where x is one."""
import ast
import os

import covidx

ROOT = os.path.dirname(os.path.abspath(covidx.__file__))
ALLOWED_CIRCLES = [{"covidx.model", "covidx.functional"},
                   {"covidx.preprocessing.image", "covidx.preprocessing.generator", "covidx.preprocessing.iterators"}]


def modules():
    """{module name: (path, is a package)} for covidx's Python files (and its C extension)."""
    found = {"covidx._core": (None, False)}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                package = name.endswith(".__init__")
                found[name[:-len(".__init__")] if package else name] = (path, package)
    return found


def imports(found):
    """[(importer, imported, inside a function)] for every import of a covidx module."""
    out = []
    for name, (path, package) in found.items():
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        inner = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "covidx"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == "covidx":
                    module = node.module
                else:
                    continue
                targets = [module + "." + a.name if module + "." + a.name in found else module for a in node.names]
            out += [(name, t, id(node) in inner) for t in targets if t != name]
    return out


def circles(edges):
    """The strongly connected sets of more than one module (Tarjan's algorithm)."""
    graph = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


FOUND = modules()
EDGES = imports(FOUND)


def test_the_reader_sees_the_package():
    assert {"covidx.model", "covidx.functional", "covidx.head", "covidx.saving", "covidx.formats",
            "covidx.preprocessing.image"} <= set(FOUND)
    assert ("covidx.model", "covidx.functional", True) in EDGES  # the circle, broken inside functions
    assert ("covidx.functional", "covidx.model", False) in EDGES


def test_no_import_circles_but_model_and_functional():
    for group in circles(EDGES):
        assert group in ALLOWED_CIRCLES, "an import circle: %s" % sorted(group)


def test_readers_and_the_image_pipeline_do_not_import_models():
    banned = {"covidx.model", "covidx.functional", "covidx.training", "covidx.saving"}
    wrong = [(a, b) for a, b, _ in EDGES if a.startswith(("covidx.formats", "covidx.preprocessing")) and b in banned]
    assert not wrong


def test_imports_inside_functions_only_break_the_allowed_circles():
    inside = {(a, b) for a, b, in_function in EDGES if in_function}
    allowed = {(a, b) for group in ALLOWED_CIRCLES for a in group for b in group if a != b}
    assert inside <= allowed, sorted(inside - allowed)
