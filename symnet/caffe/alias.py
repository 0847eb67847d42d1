"""``import caffe`` resolving to ``symnet.caffe``.

``install_alias()`` puts a finder first on ``sys.meta_path`` that answers ``caffe`` and
every ``caffe.X`` name with the module ``symnet.caffe.X`` (``caffe.proto.caffe_pb2``,
``caffe.io``, ``caffe.draw``, ...), and registers ``caffe.layers`` / ``caffe.params``
(pycaffe's NetSpec helpers, which scripts import as if they were modules).

A real pycaffe (a ``caffe`` package whose compiled ``_caffe`` extension is present) is
left alone unless ``force=True``; a Caffe source tree on ``sys.path`` without a built
``_caffe`` cannot be imported anyway, so it does not stop the alias (the finder runs
before the path finder and so shadows it).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

ALIAS = "caffe"
TARGET = "symnet.caffe"
# names pycaffe scripts import that are attributes, not modules, of the package
_ATTRIBUTE_MODULES = ("layers", "params")


def _target_name(fullname):
    if fullname == ALIAS:
        return TARGET
    if fullname.startswith(ALIAS + "."):
        return TARGET + fullname[len(ALIAS):]
    return None


class _Loader(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass


class CaffeAliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``caffe`` and ``caffe.*`` to ``symnet.caffe`` and its submodules."""

    def find_spec(self, fullname, path=None, target=None):
        name = _target_name(fullname)
        if name is None:
            return None
        if importlib.util.find_spec(name) is None:
            return None
        is_pkg = fullname == ALIAS or fullname == ALIAS + ".proto"
        return importlib.machinery.ModuleSpec(fullname, _Loader(name), is_package=is_pkg)


def _is_ours(module):
    return isinstance(module, types.ModuleType) and module.__name__ == TARGET


def built_pycaffe_dir(paths=None):
    """The folder of a real pycaffe (a ``caffe`` package with its compiled ``_caffe``
    extension) on ``paths`` (default sys.path), or None. A source tree without a
    built ``_caffe`` does not count."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for entry in sys.path if paths is None else paths:
        d = os.path.join(entry or os.getcwd(), ALIAS)
        if not os.path.isfile(os.path.join(d, "__init__.py")):
            continue
        try:
            names = os.listdir(d)
        except OSError:
            continue
        if any(n.startswith("_caffe") and n.endswith(suffixes) for n in names):
            return d
    return None


def installed():
    """True when ``import caffe`` gives symnet.caffe."""
    mod = sys.modules.get(ALIAS)
    return mod is not None and _is_ours(mod) or any(
        isinstance(f, CaffeAliasFinder) for f in sys.meta_path)


def install_alias(force=False):
    """Make ``import caffe`` (and ``caffe.io``, ``caffe.proto.caffe_pb2``,
    ``caffe.draw``, ...) give symnet's modules. Returns True when the alias is in
    place, False when a real pycaffe was found and left alone (pass ``force=True`` to
    replace it, in sys.modules too)."""
    current = sys.modules.get(ALIAS)
    if current is not None and not _is_ours(current):
        if not force:
            return False
        for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
            del sys.modules[name]
    elif current is None and not force and built_pycaffe_dir() is not None:
        return False
    if not any(isinstance(f, CaffeAliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CaffeAliasFinder())
    pkg = importlib.import_module(TARGET)
    sys.modules[ALIAS] = pkg
    for sub in ("proto", "proto.caffe_pb2", "io", "net_spec", "pycaffe"):
        sys.modules[f"{ALIAS}.{sub}"] = importlib.import_module(f"{TARGET}.{sub}")
    for attr in _ATTRIBUTE_MODULES:
        sys.modules[f"{ALIAS}.{attr}"] = getattr(pkg, attr)
    return True


def uninstall_alias():
    """Undo install_alias: drop the finder and the ``caffe`` entries it made."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, CaffeAliasFinder)]
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        mod = sys.modules[name]
        if name[len(ALIAS) + 1:] in _ATTRIBUTE_MODULES or (
                isinstance(mod, types.ModuleType)
                and (mod.__name__ == TARGET or mod.__name__.startswith(TARGET + "."))):
            del sys.modules[name]


def run_script(path, argv=(), force=False):
    """Run the Python file ``path`` as ``__main__`` with ``sys.argv = [path, *argv]``,
    its folder first on sys.path and the caffe alias installed (as ``python path``
    would run a pycaffe script)."""
    import runpy
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no script '{path}'")
    install_alias(force=force)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [path, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
