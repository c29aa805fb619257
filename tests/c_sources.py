"""The C source lists of setup.py (its one definition), read without running setup.py: the names
assigned there from lists of strings and sums of them.

    python tests/c_sources.py GEMM_SOURCES     # one path per line, relative to the repository
"""
import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value(node, known):
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _value(node.left, known) + _value(node.right, known)
    if isinstance(node, ast.Name):
        return known[node.id]
    return list(ast.literal_eval(node))


def lists(path=os.path.join(REPO, "setup.py")):
    """{name: [path, ...]} for setup.py's top-level *SOURCES assignments."""
    known = {}
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id.endswith("SOURCES"):
            known[node.targets[0].id] = _value(node.value, known)
    return known


def sources(name):
    """setup.py's list `name` (e.g. 'GEMM_SOURCES') as absolute paths."""
    return [os.path.join(REPO, p) for p in lists()[name]]


if __name__ == "__main__":
    print("\n".join(sources(sys.argv[1])))
