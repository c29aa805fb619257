"""The package's import plan, read from its source with ast, so that it stays as README's layout
section describes it:

- no import circles, but model <-> functional (Keras's own pair: keras.Model(inputs=...,
  outputs=...) is a functional model, and a functional model is a Model);
- the file readers and writers (formats/) and the image pipeline (preprocessing/) import neither
  the model, the functional model nor training;
- the image pipeline reads top to bottom: the image reader (preprocessing/reader.py) imports only
  the errors module and the DICOM reader (preprocessing/dicom.py), which imports only the errors
  module; preprocessing/image.py, Keras's import path, offers the pipeline's names and no module
  of the pipeline imports it;
- the command line (__main__.py) and Dask (distributed.py) score files through one module
  (file_scoring.py), and neither imports the other;
- imports inside functions only break the model <-> functional circle or load an optional
  dependency (an extra of pyproject.toml, or a module not every platform has), and optional
  dependencies are loaded only there, so that `import covidx` needs only NumPy and Pillow.

Every import counts, at module level or inside a function: `from . import x` is an import of the
module x where x is one."""
import ast
import os

import covidx

ROOT = os.path.dirname(os.path.abspath(covidx.__file__))
ALLOWED_CIRCLES = [{"covidx.model", "covidx.functional"}]
# pyproject.toml's extras (keras, onnx, augment, dicom, report, distributed), and `resource`, which
# only POSIX systems have.
OPTIONAL = {"h5py", "onnx", "scipy", "pydicom", "matplotlib", "dask", "distributed", "pandas", "resource"}


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


def import_nodes(path):
    """[(ast import node, inside a function)] of one source file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    inner = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
    return [(node, id(node) in inner) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def imports(found):
    """[(importer, imported, inside a function)] for every import of a covidx module."""
    out = []
    for name, (path, package) in found.items():
        if path is None:
            continue
        for node, in_function in import_nodes(path):
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
            out += [(name, t, in_function) for t in targets if t != name]
    return out


def outside_imports(found):
    """[(importer, top-level package, inside a function)] for every import of anything but covidx."""
    out = []
    for name, (path, _) in found.items():
        if path is None:
            continue
        for node, in_function in import_nodes(path):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                tops = []
            out += [(name, top, in_function) for top in tops if top not in ("covidx", "__future__")]
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
OUTSIDE = outside_imports(FOUND)


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


def test_imports_inside_functions_otherwise_load_optional_dependencies_and_only_there():
    assert ("covidx.preprocessing.dicom", "pydicom", True) in OUTSIDE  # the reader sees them
    inside = {(a, b) for a, b, in_function in OUTSIDE if in_function and b not in OPTIONAL}
    assert not inside, sorted(inside)
    at_the_top = {(a, b) for a, b, in_function in OUTSIDE if not in_function and b in OPTIONAL}
    assert not at_the_top, sorted(at_the_top)


def test_the_image_pipeline_reads_top_to_bottom():
    def imported_by(module):
        return {b for a, b, _ in EDGES if a == module}

    assert {"covidx.preprocessing.reader", "covidx.preprocessing.dicom", "covidx.preprocessing.arrays"} <= set(FOUND)
    assert imported_by("covidx.preprocessing.dicom") == {"covidx.errors"}
    assert imported_by("covidx.preprocessing.reader") == {"covidx.errors", "covidx.preprocessing.dicom"}
    assert imported_by("covidx.preprocessing.arrays") == set()
    face = [a for a, b, _ in EDGES if b == "covidx.preprocessing.image" and a.startswith("covidx.preprocessing.")]
    assert not face, face


def test_the_command_line_and_dask_score_files_through_one_module():
    for user in ("covidx.__main__", "covidx.distributed"):
        assert (user, "covidx.file_scoring", False) in EDGES
    assert not [(a, b) for a, b, _ in EDGES if {a, b} == {"covidx.__main__", "covidx.distributed"}]
    assert not [(a, b) for a, b, _ in EDGES if a == "covidx.file_scoring"
                and b not in ("covidx.errors", "covidx.preprocessing.reader", "covidx.preprocessing.arrays")]
