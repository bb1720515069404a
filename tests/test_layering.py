"""The package's layers, and that its imports point one way (docs/architecture.md).

Parsed from the source with ``ast``, so the test sees every import, including those
inside functions, without importing anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / 'resnet_backbone'

#: module or subpackage (relative to resnet_backbone) -> layer; a module may import only
#: from its own layer or below. Listed top-down as docs/architecture.md draws them.
LAYERS: dict[str, int] = {
    '__init__': 7, 'doctor': 7,
    'tools': 6,
    'apis': 5,
    'engine': 4,
    'registry': 3,
    'models': 2,
    'io': 1, 'data': 1,
    'errors': 0, 'spec': 0, 'options': 0, 'version': 0, 'ops': 0,
}
#: modules whose third-party imports sit in functions by design, and why
DEFERRED_BY_DESIGN = {
    'doctor': 'it must run, and say what is broken, when torch or mmcv cannot be imported',
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob('*.py')):
        rel = path.relative_to(PKG).with_suffix('')
        parts = list(rel.parts)
        if parts[-1] == '__init__' and len(parts) > 1:
            parts = parts[:-1]
        out['.'.join(parts)] = path
    return out


def _layer(module: str) -> int:
    head = module.split('.')[0]
    if head not in LAYERS:
        raise AssertionError(f'resnet_backbone.{module} has no layer: add {head!r} to '
                             'LAYERS here and to docs/architecture.md')
    return LAYERS[head]


def _imports(module: str, path: Path):
    """(imported module relative to the package, line, inside a function) per import."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(c) for f in funcs for c in ast.walk(f) if c is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = '.'.join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f'{target}.{a.name}'.lstrip('.')
                                                      for a in node.names]
            elif node.module and node.module.split('.')[0] == 'resnet_backbone':
                names = [node.module[len('resnet_backbone'):].lstrip('.')]
            else:
                names = ['!' + (node.module or '')]
        elif isinstance(node, ast.Import):
            names = [a.name[len('resnet_backbone'):].lstrip('.')
                     if a.name.split('.')[0] == 'resnet_backbone' else '!' + a.name
                     for a in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in nested


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_imports_point_down():
    """A module imports only from its own layer or below: the network never reaches up
    into the Runner set-up, the Runner set-up never into the user APIs, and so on."""
    wrong = []
    for module, path in _modules().items():
        for target, line, _ in _imports(module, path):
            if target.startswith('!') or not target:
                continue
            if _layer(target) > _layer(module):
                wrong.append(f'resnet_backbone/{path.relative_to(PKG)}:{line} ({module}, layer '
                             f'{_layer(module)}) imports {target} (layer {_layer(target)})')
    assert not wrong, 'imports that point up:\n' + '\n'.join(wrong)


def test_only_the_tools_and_the_doctor_import_the_runner():
    """The library raises ``errors.ToolError``; only the tools package and the doctor
    import the tools' runner (``tools.runner``: how a tool ends), not the library under
    them."""
    wrong = [f'resnet_backbone/{path.relative_to(PKG)}:{line} ({module})'
             for module, path in _modules().items()
             if module.split('.')[0] not in ('tools', 'doctor')
             for target, line, _ in _imports(module, path)
             if target == 'tools.runner' or target.startswith('tools.runner.')]
    assert not wrong, 'library modules importing the runner:\n' + '\n'.join(wrong)


def test_no_hidden_imports():
    """Imports sit at module top. The exceptions are optional or heavy dependencies,
    each with a comment on the import saying why; an import of our own package inside a
    function (a hidden dependency) is never one of them."""
    hidden = []
    for module, path in _modules().items():
        lines = path.read_text().splitlines()
        for target, line, inside in _imports(module, path):
            if not inside:
                continue
            text = lines[line - 1]
            if module in DEFERRED_BY_DESIGN:
                continue
            if not target.startswith('!'):
                hidden.append(f'resnet_backbone/{path.relative_to(PKG)}:{line}: {text.strip()}')
            elif '#' not in text and not lines[line - 2].strip().startswith('#'):
                hidden.append(f'resnet_backbone/{path.relative_to(PKG)}:{line}: {text.strip()} '
                              '(no comment saying why it is not at the top)')
    assert not hidden, 'imports inside functions:\n' + '\n'.join(hidden)


def test_no_import_cycles_between_modules():
    """Module-level imports form no cycle (resnet <-> weights was one)."""
    mods = _modules()
    graph = {}
    for module, path in mods.items():
        deps = set()
        for target, _, inside in _imports(module, path):
            if inside or target.startswith('!') or not target:
                continue
            while target and target not in mods:  # from .x import name -> module x
                target = target.rpartition('.')[0]
            if target and target != module and not module.startswith(target + '.') \
                    and module != '__init__':
                deps.add(target)
        graph[module] = deps
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError('import cycle: ' + ' -> '.join(stack + [m, d]))
            if not state.get(d):
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])
