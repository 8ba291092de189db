"""Load pickles without running code: an allow-list of the few globals scene files need.

A pickle can call any importable function while it loads (``os.system`` via ``__reduce__``), so
scene files from the internet are read through :func:`load_pickle`, whose unpickler resolves only
the numpy / builtins constructors that plain numpy arrays and dicts need. Anything else is refused
before it is called.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

# (module, name) pairs a ScenarioNet file may reference. All of them only build arrays, dtypes,
# scalars or containers. ``numpy._core`` is numpy 2's spelling of ``numpy.core`` (files written
# with numpy 2); ``_frombuffer`` is what protocol-5 pickles of contiguous arrays use.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")}
    | {(core, "_frombuffer") for core in ("numpy.core.numeric", "numpy._core.numeric")}
    | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "defaultdict"),
        ("collections", "OrderedDict"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


class UnsafePickleError(pickle.UnpicklingError):
    """The file references a global outside :data:`ALLOWED_GLOBALS`; nothing was executed."""


class CorruptSceneFileError(ValueError):
    """The file is truncated, not a pickle, or not shaped like a scene file."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self._path}: refused to load global '{module}.{name}' (only plain numpy arrays and "
                "builtin containers are allowed; a pickle that calls other code may be malicious). "
                "Only load scene files from a source you trust, re-exported as plain data."
            )
        return super().find_class(module, name)


def load_pickle(path: str | os.PathLike):
    """Unpickle ``path`` allowing only :data:`ALLOWED_GLOBALS`.

    Raises :class:`UnsafePickleError` for any other global (before calling it),
    :class:`CorruptSceneFileError` for a truncated or malformed file, and FileNotFoundError
    when ``path`` does not exist.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError,
                AttributeError, ImportError, MemoryError, OverflowError) as e:
            raise CorruptSceneFileError(
                f"{path}: cannot read this pickle ({type(e).__name__}: {e}); the file is truncated or "
                "corrupt: copy or convert it again."
            ) from e
