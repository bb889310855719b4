"""Native checkpoint format and safe, atomic file writing.

A *component* (text encoder, image encoder, generator, a discriminator) is stored as a folder
``<dir>/<name>/`` holding ``config.json`` (its config dataclass, plus ``"class"`` and ``"format"``) and
``model.safetensors`` (its state dict). Training state files are written with ``torch.save`` and read
with ``torch.load(weights_only=True)``. Every write goes to a temporary file in the same folder, is
flushed and fsynced, then renamed over the target, so a crash, a full disk or Ctrl-C never leaves a
half-written file in place of the last good one.

Every file written here can be checked when it is read (:func:`verify_file`): ``model.safetensors``
carries the SHA-256 of its tensor data in its header's metadata, torch's zip files (training states)
carry a CRC-32 per record, and a file in the original release's legacy format gets a ``<name>.sha256``
sidecar (``sha256sum``'s format). A mismatch is a :class:`DamagedFileError`. Loaded weights must be
finite (:func:`check_finite_weights`); files without a checksum (the original release's) get that check
alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickletools
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write, atomic_write_bytes, atomic_write_text, checked_digest, with_digest
from .config import from_dict, to_dict
from .errors import CheckpointError, DamagedFileError

FORMAT_VERSION = 1
DIGEST_KEY = "attngan.sha256"  # safetensors metadata: SHA-256 of the tensor data (the bytes after the header)
DIGEST_SUFFIX = ".sha256"  # sidecar of a file whose format has no room for a checksum
_CHUNK = 1 << 24


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class _KeepsWriteErrors:
    """A binary file for ``torch.save`` that remembers what its ``write`` raised: torch's zip writer turns an
    exception of the file (a full disk, Ctrl-C) into a RuntimeError, which is re-raised as the original."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._f.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename (the object must be weights_only-loadable). The
    tensors stream to the file one record at a time: no copy of the whole object is held in memory."""

    def write(f: Any) -> None:
        out = _KeepsWriteErrors(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None  # e.g. OSError(ENOSPC): atomic_write reports a full disk
            raise

    return atomic_write(path, write)


# ------------------------------------------------------------------------------------------------
# Checksums and finite weights


def _sha256_of(f: Any, start: int = 0) -> str:
    f.seek(start)
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def digest_sidecar(path: str | os.PathLike) -> Path:
    """``<path>.sha256``: the checksum of a file whose format has no room for one."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def atomic_write_with_digest(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically and its SHA-256 to :func:`digest_sidecar` (``sha256sum -c`` reads it).

    The old sidecar goes first: an interruption between the two writes leaves a file without a checksum
    (checked for finite weights only), never a checksum of another version."""
    path = Path(path)
    sidecar = digest_sidecar(path)
    sidecar.unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return path


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a tensor in C order and little-endian, as safetensors stores them (a view of the tensor's
    memory for a contiguous CPU tensor on a little-endian machine; otherwise a copy of this tensor only)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if sys.byteorder != "little" and flat.element_size() > 1:
        return memoryview(flat.view(_INT_OF_SIZE[flat.element_size()]).numpy().byteswap()).cast("B")
    return memoryview(flat.view(torch.uint8).numpy())


def _safetensors_header(state: dict[str, torch.Tensor]) -> tuple[bytes, list[str]]:
    """The safetensors header (length prefix included) with the SHA-256 of the tensor data in its metadata,
    and the names in the order of their data (sorted). One tensor's bytes at a time are made and hashed, so
    that a state of non-contiguous (e.g. channels_last) tensors is never copied whole."""
    header: dict[str, Any] = {}
    digest = hashlib.sha256()
    offset = 0
    names = sorted(state)
    for name in names:
        tensor = state[name]
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"cannot write {name} of dtype {tensor.dtype} to safetensors")
        raw = _raw_bytes(tensor)
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
            "data_offsets": [offset, offset + raw.nbytes],
        }  # fmt: skip
        digest.update(raw)
        offset += raw.nbytes
    header["__metadata__"] = {DIGEST_KEY: digest.hexdigest()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensor data starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text, names


def write_safetensors_with_digest(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` atomically as a safetensors file with the SHA-256 of its tensor data in the header's
    metadata, one tensor at a time (no copy of the whole state is held in memory)."""
    head, names = _safetensors_header(state)

    def write(f: Any) -> None:
        f.write(head)
        for name in names:
            f.write(_raw_bytes(state[name]))

    return atomic_write(path, write)


def _verify_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > os.fstat(f.fileno()).st_size:
            raise DamagedFileError(f"{path} is damaged: its safetensors header is cut off or garbled")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise DamagedFileError(f"{path} is damaged: its safetensors header is not valid JSON") from None
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        expected = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
        if expected is None:
            return False
        if _sha256_of(f, 8 + n) != expected:
            raise DamagedFileError(
                f"{path} is damaged: its tensor data does not match the SHA-256 recorded in it when it was written"
            )
    return True


def _verify_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise DamagedFileError(f"{path} is damaged: its zip structure is not readable ({exc})") from None
    if bad is not None:
        raise DamagedFileError(f"{path} is damaged: its record {bad} fails the CRC-32 check recorded when it was written")


def verify_file(path: str | os.PathLike) -> bool:
    """Check a file against the checksum recorded when it was written: a ``.sha256`` sidecar, the SHA-256
    in a safetensors header, or the CRC-32 of every record of a zip file (``torch.save``'s format).

    Returns True when checked and False when the file carries no checksum (the original release's
    ``.pth`` files, safetensors from elsewhere). Raises :class:`DamagedFileError` on a mismatch."""
    path = Path(path)
    sidecar = digest_sidecar(path)
    if sidecar.is_file():
        expected = sidecar.read_text(encoding="utf-8", errors="replace").split(maxsplit=1)[:1]
        with open(path, "rb") as f:
            if [_sha256_of(f)] != expected:
                raise DamagedFileError(
                    f"{path} is damaged: its contents do not match the SHA-256 in {sidecar.name}, recorded when it "
                    "was written"
                )
        return True
    if path.suffix == ".safetensors":
        return _verify_safetensors(path)
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if zipped:
        _verify_zip(path)
    return zipped


def check_finite_weights(
    state: Mapping[str, Any],
    what: str,  # names the network in the message, e.g. "generator (Generator)"
    source: str | os.PathLike,  # the file (or what else holds the weights)
    consequence: str = "the file is damaged, or it was saved from a diverged run; it cannot be used",
) -> None:
    """Raise CheckpointError naming ``what`` and ``source`` when a floating-point tensor of ``state``
    holds NaN or infinity (one pass over the weights, at load)."""
    bad = [
        k for k, t in state.items()
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]  # fmt: skip
    if bad:
        raise CheckpointError(
            f"the {what} weights in {source} are not finite (NaN or infinity in {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}): {consequence}"
        )


def _pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals that the pickles of a torch file import (a zip's ``*.pkl`` records, or
    the consecutive pickles of the legacy format), read with ``pickletools`` without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as z:
            streams = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        streams = [path.read_bytes()]
    found: list[str] = []
    for data in streams:
        f = io.BytesIO(data)
        while f.tell() < len(data):
            pushed: list[Any] = []  # strings pushed, for STACK_GLOBAL (module and name from the stack)
            memo: dict[int, Any] = {}
            try:
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                        found.append(f"{pushed[-2]}.{pushed[-1]}")
                    elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                        pushed.append(arg)
                    elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and pushed:
                        memo[int(arg)] = pushed[-1]
                    elif op.name == "MEMOIZE" and pushed:
                        memo[len(memo)] = pushed[-1]
                    elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                        pushed.append(memo.get(int(arg)))
            except Exception:  # noqa: BLE001 - the raw storages after the legacy pickles, or damage
                break
    return found


def _unsafe_globals(path: Path) -> list[str]:
    """The globals of :func:`_pickle_globals` that ``weights_only`` loading does not allow."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        allowed = {"collections.OrderedDict"}
    for item in getattr(torch.serialization, "get_safe_globals", list)():
        obj = item[0] if isinstance(item, tuple) else item
        allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
    try:
        names = _pickle_globals(path)
    except OSError:
        return []
    if not allowed - {"collections.OrderedDict"}:  # no allowlist to compare with: torch's own names pass
        return [g for g in dict.fromkeys(names) if g not in allowed and not g.startswith("torch.")]
    return [g for g in dict.fromkeys(names) if g not in allowed]


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a file checked by :func:`verify_file`, with errors that say
    what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    verify_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with a message for the user
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        text = str(exc)
        with open(path, "rb") as f:
            head = f.read(4)
        pickled = head.startswith((b"PK\x03\x04", b"\x80"))  # a torch zip file, or a legacy pickle
        unsafe = _unsafe_globals(path) if pickled else []
        if unsafe:
            shown = ", ".join(unsafe[:3]) + (" ..." if len(unsafe) > 3 else "")
            raise CheckpointError(
                f"{path} holds Python objects other than tensors; refused because loading it could run code (it "
                f"names {shown}). If it comes from a source you trust, convert it there: load it and save the state "
                "dict alone (torch.save(model.state_dict(), PATH)), then pass that file"
            ) from exc
        if not pickled:
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint (it does not start as a torch zip file or pickle): the file "
                "is damaged, or it is something else"
            ) from exc
        if head.startswith(b"\x80") and "magic number" in text:  # a pickle, but not torch's legacy format
            raise CheckpointError(
                f"{path} is a plain Python pickle, not a PyTorch checkpoint (a captions.pickle or "
                "filenames.pickle?); pass the .pth file of the model here"
            ) from exc
        msg = msg.split(". ")[0][:200]  # torch's first sentence, without its advice to unpickle unsafely
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {type(exc).__name__}: {msg}"
        ) from exc


def save_component(directory: str | os.PathLike, module: torch.nn.Module, config: Any, **extra: Any) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (with the SHA-256 of its tensor data) of one network
    into ``directory``."""
    directory = Path(directory)
    write_safetensors_with_digest(directory / "model.safetensors", module.state_dict())  # one tensor at a time
    meta = {
        "format": FORMAT_VERSION,
        "class": type(module).__name__,
        "config_class": type(config).__name__,
        "config": to_dict(config),
        **extra,
    }
    atomic_write_json(directory / "config.json", with_digest(meta))
    return directory


def read_component_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a saved attngan component")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    return checked_digest(meta, path)


def load_state_dict_file(path: str | os.PathLike, what: str = "") -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a plain state dict saved with torch (``weights_only=True``), checked
    against its checksum (:func:`verify_file`) and for finite weights (``what`` names them in errors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        verify_file(path)
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    else:
        state = safe_torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    check_finite_weights(state, what or path.stem, path)
    return state


def inception_weights_state(weights: Any) -> dict[str, torch.Tensor]:
    """Inception-v3 weights as a state dict: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``, downloaded
    into the torch hub cache on first use), a file (a state dict), or a torchvision ``WeightsEnum`` member.
    Raises :class:`CheckpointError` saying what to do when they cannot be had."""
    if isinstance(weights, (str, os.PathLike)) and str(weights).lower() != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise CheckpointError(
                f"Inception-v3 weights file {path} does not exist; pass an existing file, or 'imagenet' "
                "for torchvision's (downloaded on first use)"
            )
        return load_state_dict_file(path)
    if isinstance(weights, (str, os.PathLike)):
        from torchvision.models import Inception_V3_Weights

        weights = Inception_V3_Weights.IMAGENET1K_V1
    if not hasattr(weights, "get_state_dict"):
        raise CheckpointError(f"unsupported Inception-v3 weights: {type(weights).__name__}")
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError, hash mismatch, ...
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise CheckpointError(
            f"could not get torchvision's Inception-v3 weights ({type(exc).__name__}: {exc}). They are downloaded "
            f"on first use from {weights.url} to {cached}: put that file there from a machine with internet, "
            "or pass a local weights file (--inception-weights FILE)"
        ) from exc


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error listing what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:5]))
        if missing:
            parts.append(f"missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(
            f"{source} does not fit this {type(module).__name__} (it was saved with another configuration): "
            + " | ".join(parts)
        )
    module.load_state_dict(state, strict=True)


def load_component(directory: str | os.PathLike, cls: type, config_cls: type, **kwargs: Any) -> torch.nn.Module:
    """Rebuild ``cls(config_cls(**config.json))`` and load ``model.safetensors`` into it (eval mode)."""
    directory = Path(directory)
    meta = read_component_config(directory)
    if meta.get("class") != cls.__name__:
        raise CheckpointError(f"{directory} holds a {meta.get('class')}, not a {cls.__name__}")
    try:
        config = from_dict(config_cls, meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json does not describe a {config_cls.__name__}: {exc}") from exc
    module = cls(config, **kwargs)
    state = load_state_dict_file(directory / "model.safetensors", f"{directory.name} ({cls.__name__})")
    load_state_dict_strict(module, state, str(directory))
    return module.eval()


def config_diff(a: Any, b: Any) -> list[str]:
    """Human-readable list of fields that differ between two (nested) config dataclasses."""
    da = to_dict(a) if dataclasses.is_dataclass(a) else a
    db = to_dict(b) if dataclasses.is_dataclass(b) else b
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}.{k}" if prefix else k)
        elif x != y:
            out.append(f"{prefix}: {x!r} != {y!r}")

    walk(da, db, "")
    return out


__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "verify_file",
    "check_finite_weights",
    "digest_sidecar",
    "atomic_write_with_digest",
    "write_safetensors_with_digest",
    "save_component",
    "load_component",
    "read_component_config",
    "load_state_dict_file",
    "load_state_dict_strict",
    "config_diff",
    "from_dict",
]
