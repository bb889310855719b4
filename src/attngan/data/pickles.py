"""Read the original release's Python 2 pickles (``captions.pickle``, ``filenames.pickle``,
``class_info.pickle``) without executing code.

The files were written by Python 2 with pickle protocol 2 (reference section 3.1). They are read with
``encoding="latin1"`` (Python 2 ``str`` objects become ``str``; numpy needs latin1 for its raw array
bytes) by an unpickler whose ``find_class`` allows only builtin containers and scalars, plus numpy's
array and numeric scalar reconstruction for ``class_info.pickle`` (the birds release's holds
``numpy.int64`` scalars, protocol 0). Anything else (``os.system``, ``subprocess.Popen``, arbitrary
classes) is refused with a :class:`~attngan.errors.DataError` naming the global. ``bytes`` left in the
result (Python 3 protocol-2 writers encode them through ``_codecs.encode``) are decoded to ``str``, and
Python 2 ``str`` holding UTF-8 (read as latin1) are decoded as UTF-8.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError
from ..text import Vocabulary

__all__ = [
    "RestrictedUnpickler",
    "safe_load_pickle",
    "CaptionsPickle",
    "load_captions_pickle",
    "load_filenames",
    "load_class_info",
]


def _latin1_bytes(text: str = "", encoding: str = "latin1") -> bytes:
    """The only use of ``_codecs.encode`` that a protocol-2 pickle needs: ``bytes`` written by Python 3."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed for latin1 text only, got {encoding!r}")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype, *args: Any) -> Any:
    """numpy's scalar reconstruction (a ``numpy.int64`` in the release's ``class_info.pickle`` of the birds)
    for plain numeric dtypes only: an object scalar could hold anything."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"numpy scalars of dtype {dtype!r} are not allowed")
    try:  # numpy >= 2
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar(dtype, *args)


_BUILTINS = "list dict tuple set frozenset int float complex bool str bytes bytearray".split()


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a data pickle may name."""
    import builtins

    allowed: dict[tuple[str, str], Any] = {("builtins", n): getattr(builtins, n) for n in _BUILTINS}
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("_codecs", "encode")] = _latin1_bytes
    allowed[("codecs", "encode")] = _latin1_bytes
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = _numpy_scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only builtin containers/scalars and numpy array reconstruction."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1", fix_imports=True)
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (__builtin__.set, copy_reg, ...) -> Python 3, as pickle.Unpickler.find_class does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = self.allowed.get((module, name))
        if obj is None:
            raise DataError(
                f"{self.source} asks to load the global '{module}.{name}', which is not a builtin container; "
                "refusing to unpickle it (it could run code). Use the captions/filenames pickles of the "
                "original release, or rebuild them from text/"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source} holds a persistent reference; this is not an AttnGAN data pickle")


def _to_str(obj: Any) -> Any:
    """Decode every ``bytes`` (UTF-8, else latin1) in nested containers to ``str``; numpy arrays are kept."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin1")
    if isinstance(obj, str) and not obj.isascii() and max(obj) <= "\xff":
        # A Python 2 str is read as latin1 (see the module docstring); its bytes were most likely UTF-8
        # (e.g. a file name 'café'), which latin1 turns into 'cafÃ©'. Undo that where the bytes are valid UTF-8.
        try:
            return obj.encode("latin1").decode("utf-8")
        except UnicodeDecodeError:
            return obj
    if isinstance(obj, list):
        return [_to_str(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_to_str(x) for x in obj)
    if isinstance(obj, dict):
        return {_to_str(k): _to_str(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_to_str(x) for x in obj)
    return obj


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of a torch.save file in the legacy format


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` through :class:`RestrictedUnpickler`; every failure is a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the dataset folder (see `attngan data check`)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc}); check its permissions") from exc
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source=str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from a corrupt file
        head = data[:8].lstrip()
        if head.startswith(b"PK\x03\x04"):
            what = "it is a zip file (a PyTorch .pth checkpoint?), not a pickle: pass the .pickle file here"
        elif head.startswith((b"{", b"[")):
            what = "it is JSON text (a vocab.json?), not a pickle: pass the .pickle file here"
        elif not data.startswith((b"\x80", b"(", b"]", b"}", b"c", b"I", b"N", b"S", b"V")):
            # Every pickle starts with a protocol mark (2+) or a protocol-0 opcode; text or another format not.
            raise DataError(
                f"{path} is not a pickle (it starts with {data[:12]!r}): pass the dataset's .pickle file here"
            ) from exc
        else:
            what = "the file is truncated or corrupt: download it again"
        raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); {what}") from exc
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        raise DataError(f"{path} is a PyTorch checkpoint (.pth) in the legacy format, not a pickle: pass the .pickle file here")
    return _to_str(obj)


class CaptionsPickle(NamedTuple):
    """Contents of the original ``captions.pickle``: word-id captions (image-major) and the vocabulary."""

    train_captions: list[list[int]]
    test_captions: list[list[int]]
    ixtoword: dict[int, str]
    wordtoix: dict[str, int]

    @property
    def vocab(self) -> Vocabulary:
        """The released vocabulary, indices unchanged."""
        return Vocabulary.from_original(self.ixtoword, self.wordtoix)


def _id_lists(obj: Any, path: Path, what: str) -> list[list[int]]:
    if not isinstance(obj, (list, tuple)):
        raise DataError(f"{path}: {what} should be a list of captions, got {type(obj).__name__}")
    out = []
    for n, cap in enumerate(obj):
        if not isinstance(cap, (list, tuple, np.ndarray)):
            raise DataError(f"{path}: {what}[{n}] should be a list of word ids, got {type(cap).__name__}")
        try:
            out.append([int(i) for i in cap])
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: {what}[{n}] holds something other than word ids ({exc})") from exc
    return out


def load_captions_pickle(path: str | os.PathLike) -> CaptionsPickle:
    """``captions.pickle`` -> ``(train_captions, test_captions, ixtoword, wordtoix)`` with str words."""
    path = Path(path)
    obj = safe_load_pickle(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise DataError(
            f"{path} should hold [train_captions, test_captions, ixtoword, wordtoix], "
            f"got {type(obj).__name__} of length {len(obj) if hasattr(obj, '__len__') else '?'}"
        )
    train, test, ixtoword, wordtoix = obj
    if not isinstance(ixtoword, Mapping) or not isinstance(wordtoix, Mapping):
        raise DataError(f"{path}: ixtoword and wordtoix should be dicts")
    try:
        ixtoword = {int(i): str(w) for i, w in ixtoword.items()}
        wordtoix = {str(w): int(i) for w, i in wordtoix.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: ixtoword/wordtoix map words and integer indices ({exc})") from exc
    return CaptionsPickle(
        _id_lists(train, path, "train_captions"), _id_lists(test, path, "test_captions"), ixtoword, wordtoix
    )


def load_filenames(path: str | os.PathLike) -> list[str]:
    """``filenames.pickle`` -> list of image keys (paths without extension)."""
    path = Path(path)
    obj = safe_load_pickle(path)
    if isinstance(obj, np.ndarray):
        obj = _to_str(obj.tolist())  # a bytes (S) array gives bytes
    if not isinstance(obj, (list, tuple)) or not all(isinstance(k, str) for k in obj):
        raise DataError(f"{path} should hold a list of file names (str), got {type(obj).__name__}")
    return [_to_str(k) for k in obj]


def load_class_info(path: str | os.PathLike) -> list[int]:
    """``class_info.pickle`` -> one class id per image, values as stored (1-based for CUB)."""
    path = Path(path)
    obj = safe_load_pickle(path)
    if isinstance(obj, np.ndarray):
        if obj.ndim != 1 or obj.dtype.kind not in "iu":
            raise DataError(f"{path} should hold a 1-D integer array, got {obj.dtype} {obj.shape}")
        return [int(c) for c in obj]
    if not isinstance(obj, Sequence) or isinstance(obj, str):
        raise DataError(f"{path} should hold a list of class ids, got {type(obj).__name__}")
    try:
        return [int(c) for c in obj]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} should hold integer class ids ({exc})") from exc
