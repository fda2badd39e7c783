"""One self-contained Python file from several of our modules: the BMZ architecture source.

bioimageio.core imports a ``pytorch_state_dict`` architecture from a single ``.py`` file (it runs
it with ``importlib`` under a generated module name, so a file cannot import its siblings). A
package must also run where hazematching is not installed. :func:`bundle_source` therefore
concatenates the definitions the package needs — taken from our modules' source at export time,
so there is one copy of the code — and drops the imports between them. The remaining imports
are those of third-party modules the kept definitions use (torch, pydantic, the standard
library).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Sequence

PACKAGE = "hazematching"

#: What the package's architecture file is made of, in dependency order: (module, names or
#: None for the whole module).
BMZ_BUNDLE: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("hazematching.calibration", ("CalibrationKind", "Calibration")),
    ("hazematching.config", ("_Strict", "NetworkConfig")),
    ("hazematching.sampling", None),
    ("hazematching.noise_field", None),
    ("hazematching.predict", ("TileMoments", "CPU_BATCH_PIXELS", "default_batch_size", "noise_tile",
                              "smooth_variance")),
    ("hazematching.nets.unet", None),
    ("hazematching.bmz.network", None),
)


def _is_own(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").split(".")[0] == PACKAGE


def _defined(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    return {t.id for t in flat if isinstance(t, ast.Name)}


def _used_names(nodes: Sequence[ast.AST]) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


def bundle_source(parts: Sequence[tuple[str, tuple[str, ...] | None]] = BMZ_BUNDLE,
                  docstring: str = "") -> str:
    """Python source that defines the listed names with no import of our own package.

    Args:
        parts: (module name, top-level names to keep or None for all), dependencies first.
        docstring: the bundle's module docstring.

    Raises:
        ValueError: a name asked for is not defined at the top level of its module, two parts
            define the same name, or a kept definition uses a name imported from our package
            that no earlier part defines.
    """
    imports: dict[str, ast.stmt] = {}
    body: list[ast.stmt] = []
    own_imports: set[str] = set()
    defined: dict[str, str] = {}
    for module_name, names in parts:
        tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
        wanted = set(names) if names is not None else None
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module == "__future__"
                                                     or _is_own(node)):
                if node.module != "__future__":
                    own_imports |= {a.asname or a.name for a in node.names}
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    single = (ast.Import(names=[alias]) if isinstance(node, ast.Import) else
                              ast.ImportFrom(module=node.module, names=[alias], level=0))
                    imports.setdefault(ast.unparse(single), single)
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the module docstring
            names_here = _defined(node)
            if wanted is not None and not names_here & wanted:
                continue
            found |= names_here
            for name in names_here:
                if name in defined:
                    raise ValueError(f"{module_name} and {defined[name]} both define {name!r}")
                defined[name] = module_name
            body.append(node)
        if wanted is not None and wanted - found:
            raise ValueError(f"{module_name} defines no {', '.join(sorted(wanted - found))}")
    used = _used_names(body)
    missing = sorted((own_imports & used) - set(defined))
    if missing:
        raise ValueError(f"the bundle uses {', '.join(missing)} from {PACKAGE} but no part "
                         f"defines it")
    kept = [node for node in imports.values()
            if (node.names[0].asname or node.names[0].name).split(".")[0] in used]
    module = ast.Module(body=[ast.Expr(ast.Constant(docstring)),
                              ast.ImportFrom(module="__future__",
                                             names=[ast.alias("annotations")], level=0),
                              *kept, *body], type_ignores=[])
    return ast.unparse(ast.fix_missing_locations(module)) + "\n"
