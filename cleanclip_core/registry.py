"""The registries of what a study names (attacks, loss terms and their views, cleaning methods'
needs, stopping rules, detectors) and the plugins that add to them.

A registry imports no torch (the workflow reads it to build its DAG); its entries name their
functions by import path, `module:function`, resolved where they run. A plugin is a module of
one's own whose list `ENTRIES` holds entries of any kind (`Attack`, `Term`, `View`, `Defense`,
`StoppingRule`, `Detector`). It is named in the config's `plugins` or by an entry point of the group
`cleanclip_core.plugins` of an installed package; every process loads the plugins the first time
it reads a registry, so the DAG and every job (and each of their worker processes) see the same
entries. The config names them once: they reach jobs through the environment variable
CLEANCLIP_PLUGINS. A plugin's entries are checked as they register: each import path names a
module that exists and defines the function, found without running the module (which may import
torch); a test checks the built-in entries alike.
"""

import ast
import functools
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from cleanclip_core.errors import UserError, did_you_mean

PLUGINS_VARIABLE = "CLEANCLIP_PLUGINS"
ENTRY_POINT_GROUP = "cleanclip_core.plugins"
# The modules that define the registries: a plugin's entry of any kind finds its registry.
REGISTRY_MODULES = (
    "cleanclip_core.attacks", "cleanclip_core.defenses", "cleanclip_core.terms", "cleanclip_core.stopping",
    "cleanclip_core.detectors",
)


def resolve(path: str) -> Callable:
    """The function an import path `module:function` names; a module that fails as it is
    imported (a plugin's entry may name one no registration ran) is one line naming the path."""
    module, function = path.split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except Exception as error:  # any failure of the module's code as it runs
        if module in sys.modules:
            raise
        raise UserError(f"{path}: {_import_failure(error)}") from error


def path_problem(path: Any) -> str | None:
    """What is wrong with an import path `module:function`, or None: no colon, no such module, or
    no such name in it. A module not imported yet is read, not run: its top-level statements must
    bind the name."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        return f"{path!r} is not module:function"
    module, name = path.split(":")
    if module in sys.modules:
        names = frozenset(dir(sys.modules[module]))
    else:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # a parent that is missing or no package
            spec = None
        if spec is None:
            return f"{path!r}: there is no module {module}"
        names = _top_level_names(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    if names is None or name in names:
        return None
    return f"{path!r}: module {module} defines no {name}{did_you_mean([name], names)}"


@functools.cache
def _top_level_names(source: str) -> frozenset[str] | None:
    """The names a module's top level binds (in `if` and `try` blocks too), or None where they
    cannot be told from the source (a star import, a module `__getattr__`)."""
    names = frozenset(_bound_names(ast.parse(Path(source).read_bytes(), source).body))
    return None if names & {"*", "__getattr__"} else names


def _bound_names(nodes: Iterable[ast.AST]) -> Iterator[str]:
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from (alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif not isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            yield from _bound_names(ast.iter_child_nodes(node))


class Registry(Mapping[str, Any]):
    """Entries of one kind by name: the built-in ones, then those of the plugins. `paths` are the
    fields of an entry that hold import paths (`module:function`, or None)."""

    _all: list["Registry"] = []

    def __init__(self, kind: str, entry_type: type, entries: Iterable[Any], paths: Sequence[str] = ()) -> None:
        self.kind, self.entry_type, self.paths = kind, entry_type, tuple(paths)
        self._entries: dict[str, Any] = {}
        for entry in entries:
            self.register(entry, "cleanclip_core")
        Registry._all.append(self)

    def register(self, entry: Any, origin: str) -> None:
        if entry.name in self._entries:
            raise UserError(f"plugin {origin}: {self.kind} {entry.name!r} is registered twice (once by cleanclip_core or another plugin)")
        self._entries[entry.name] = entry

    def path_problems(self, entry: Any) -> list[str]:
        """A line for each import path of `entry` that does not name a function."""
        problems = ((field, path_problem(getattr(entry, field))) for field in self.paths if getattr(entry, field) is not None)
        return [f"{self.kind} {entry.name!r}: {field}: {problem}" for field, problem in problems if problem]

    def _loaded(self) -> dict[str, Any]:
        load_plugins()
        return self._entries

    def __getitem__(self, name: str) -> Any:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def entry(self, name: str) -> Any:
        """The entry `name`, or an error that names the near misses and the known entries."""
        if name in self:
            return self[name]
        raise UserError(f"unknown {self.kind} {name!r}{did_you_mean([name], self)} (known: {', '.join(sorted(self))})")


_loaded_plugins: set[str] = set()


def use_plugins(modules: Sequence[str]) -> None:
    """Load the config's plugins here and in every process started from now on. The working
    directory joins the import path, so a plugin module beside the config is found by jobs too."""
    os.environ[PLUGINS_VARIABLE] = ",".join(modules)
    if modules:
        prepend_import_path(os.getcwd())
    load_plugins()


def prepend_import_path(folder: str) -> None:
    """Import from `folder` first, here and in every process started from now on."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    later = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path and path != folder]
    os.environ["PYTHONPATH"] = os.pathsep.join([folder, *later])


@functools.cache
def installed_plugins() -> tuple[str, ...]:
    """The plugin modules of the installed packages' entry points (read once: it scans every
    installed distribution)."""
    return tuple(point.value for point in entry_points(group=ENTRY_POINT_GROUP))


def plugin_modules() -> list[str]:
    """The installed packages' plugin modules, then the config's."""
    named = [name for name in os.environ.get(PLUGINS_VARIABLE, "").split(",") if name]
    return list(dict.fromkeys([*installed_plugins(), *named]))


def load_plugins() -> None:
    """Register the entries of every plugin module not loaded yet in this process."""
    new = [name for name in plugin_modules() if name not in _loaded_plugins]
    if not new:
        return
    _loaded_plugins.update(new)
    for module in REGISTRY_MODULES:
        importlib.import_module(module)
    problems = []
    for name in new:
        for entry in _plugin_entries(name):
            registry = _registry_of(entry, name)
            registry.register(entry, name)
            problems += [f"plugin {name}: {problem}" for problem in registry.path_problems(entry)]
    if problems:
        raise UserError("\n".join(problems))


def _plugin_entries(name: str) -> list[Any]:
    try:
        module = importlib.import_module(name)
    except Exception as error:
        if isinstance(error, ImportError) and error.name is not None and f"{name}.".startswith(f"{error.name}."):
            raise UserError(f"plugin {name}: cannot import it ({error}); is it installed, or a module in the working directory?") from None
        raise UserError(f"plugin {name}: {_import_failure(error)}") from error
    entries = getattr(module, "ENTRIES", None)
    if not isinstance(entries, (list, tuple)):
        raise UserError(f"plugin {name}: it has no list ENTRIES of the entries it adds (Attack, Term, View, Defense, StoppingRule, Detector)")
    return list(entries)


def _registry_of(entry: Any, plugin: str) -> Registry:
    for registry in Registry._all:
        if isinstance(entry, registry.entry_type):
            return registry
    raise UserError(f"plugin {plugin}: {entry!r} in ENTRIES is not an Attack, Term, View, Defense, StoppingRule or Detector")


def _import_failure(error: Exception) -> str:
    """The error's type, where it was raised (a syntax error: where the source is wrong; else the
    innermost frame outside the import machinery) and its message."""
    if isinstance(error, SyntaxError):
        return f"{type(error).__name__} at {error.filename}:{error.lineno}: {error.msg}"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if not frame.filename.startswith("<frozen ")]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}: {next(iter(str(error).splitlines()), '')}"
