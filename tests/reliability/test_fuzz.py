"""Fuzzing the readers and the model loader with mutated files (hypothesis).

Every mutated TIFF must either read or raise :class:`~hazematching.io.ImageError`; every mutated
model directory or archive must either load or raise
:class:`~hazematching.model_io.ModelFileError` — no other exception type, no hang (a 60 s
alarm per example guards against one), and bounded memory (a file cannot make the reader
allocate more than its header check allows).

CI runs a few hundred examples per test, always the same ones (derandomised). For a long,
random run set ``HAZEMATCHING_FUZZ_EXAMPLES``, e.g. ``HAZEMATCHING_FUZZ_EXAMPLES=10000 pytest
tests/reliability/test_fuzz.py -p no:cacheprovider --hypothesis-show-statistics``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import tempfile
import tracemalloc
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml
from conftest import TINY
from helpers import make_pairs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hazematching.config import ModelConfig
from hazematching.data.normalization import Normalizer
from hazematching.io import ImageError, read_image, to_planes, write_tiff
from hazematching.methods import available_methods, build_method
from hazematching.model_io import (
    CONFIG_FILE,
    META_FILE,
    MODEL_FILES,
    WEIGHTS_FILE,
    ModelFileError,
    load_model_files,
    save_model,
)

_ON_DEMAND = "HAZEMATCHING_FUZZ_EXAMPLES"
EXAMPLES = int(os.environ.get(_ON_DEMAND, "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=_ON_DEMAND not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
_HANG_S = 60
#: Peak traced allocation allowed while reading one mutated TIFF: io's header check lets a
#: small file declare at most 64 MiB of pixels.
_TIFF_PEAK_BYTES = 100 * 2**20


@contextmanager
def _hang_guard() -> Iterator[None]:
    def alarm(*_: object) -> None:
        raise TimeoutError(f"one example ran for more than {_HANG_S} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(_HANG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------- mutations
_WORDS = [v.to_bytes(4, order) for v in (0, 1, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                                          0xFFFFFFFF) for order in ("little", "big")]


@st.composite
def mutated(draw: st.DrawFn, base: bytes, hot: int = 512) -> bytes:
    """`base` with 1–6 byte-level edits, aimed mostly at its first and last `hot` bytes
    (headers, directories): bit flips, bytes, boundary 32-bit words, truncation, insertion,
    deletion, repetition."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        n = len(data)
        if n == 0:
            break
        pos = draw(st.one_of(st.integers(0, min(hot, n) - 1), st.integers(0, n - 1),
                             st.integers(max(0, n - hot), n - 1)))
        op = draw(st.sampled_from(("flip", "byte", "word", "truncate", "insert", "delete",
                                   "repeat")))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "word":
            data[pos:pos + 4] = draw(st.sampled_from(_WORDS))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


_KEYS = ["format", "format_version", "normalization", "calibration", "kind", "target",
         "inputs", "offset", "scale", "a", "b", "method", "network", "model_channels",
         "channel_mult", "num_res_blocks", "in_channels", "method_options", "data", "sampling"]
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["hazematching-model", "meanstd", "percentile", *available_methods()]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def _slots(doc: Any, path: tuple = ()) -> Iterator[tuple]:
    """Paths to every value in a JSON-like document (dict keys and list indices)."""
    yield path
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(
        doc, list) else ()
    for key, value in items:
        yield from _slots(value, (*path, key))


@st.composite
def mutated_doc(draw: st.DrawFn, base: Any) -> Any:
    """`base` (a JSON/YAML document) with 1–4 structural edits: a value replaced by a random
    value, a key deleted, or a key added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_slots(doc))))
        op = draw(st.sampled_from(("replace", "delete", "add")))
        if not path:
            if op == "replace":
                doc = draw(_VALUES)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if op == "replace":
            parent[path[-1]] = draw(_VALUES)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.sampled_from(_KEYS))] = draw(_VALUES)
    return doc


# -------------------------------------------------------------------------------- the bases
def _tiff_bases() -> list[bytes]:
    rng = np.random.default_rng(0)
    bases = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.tif"
        for array, axes in ((rng.integers(0, 4000, (24, 20), dtype=np.uint16), "YX"),
                            (rng.random((3, 16, 16), dtype=np.float32), "ZYX"),
                            (rng.integers(0, 4000, (2, 16, 16), dtype=np.uint16), "CYX")):
            write_tiff(path, array, axes)
            bases.append(path.read_bytes())
    for kwargs in ({"compression": "zlib"}, {"tile": (16, 16)}, {"photometric": "rgb"}):
        buffer = io.BytesIO()
        shape = (16, 16, 3) if "photometric" in kwargs else (32, 32)
        tifffile.imwrite(buffer, rng.integers(0, 255, shape, dtype=np.uint8), **kwargs)
        bases.append(buffer.getvalue())
    return bases


TIFF_BASES = _tiff_bases()


@given(data=st.sampled_from(TIFF_BASES).flatmap(mutated))
@FUZZ
def test_mutated_tiffs_read_or_raise_image_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.tif"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            with _hang_guard():
                image, axes = read_image(path)
                to_planes(image, axes)
            event("read")
        except ImageError:
            event("ImageError")
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peak < _TIFF_PEAK_BYTES


def _model_base() -> dict[str, bytes]:
    pairs = make_pairs(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp) / "m", build_method(ModelConfig.from_dict(TINY)),
                            Normalizer.fit(pairs.targets, pairs.inputs))
        return {name: (folder / name).read_bytes() for name in MODEL_FILES}


MODEL_BASE = _model_base()
_META_DOC = json.loads(MODEL_BASE[META_FILE])
_CONFIG_DOC = yaml.safe_load(MODEL_BASE[CONFIG_FILE])


def _archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


_MODEL_CASES = st.one_of(
    mutated_doc(_META_DOC).map(lambda d: ("json-doc", {META_FILE: json.dumps(d).encode()})),
    mutated_doc(_CONFIG_DOC).map(
        lambda d: ("yaml-doc", {CONFIG_FILE: yaml.safe_dump(d, allow_unicode=True).encode()})),
    mutated(MODEL_BASE[META_FILE], hot=256).map(lambda b: ("json-bytes", {META_FILE: b})),
    mutated(MODEL_BASE[CONFIG_FILE], hot=256).map(lambda b: ("yaml-bytes", {CONFIG_FILE: b})),
    mutated(MODEL_BASE[WEIGHTS_FILE], hot=2048).map(lambda b: ("weights", {WEIGHTS_FILE: b})),
    mutated(_archive(MODEL_BASE), hot=1024).map(lambda b: ("archive", {"model.zip": b})),
)


@given(case=_MODEL_CASES)
@FUZZ
def test_mutated_models_load_or_raise_model_file_error(case: tuple[str, dict[str, bytes]]
                                                       ) -> None:
    kind, changed = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = changed if kind == "archive" else {**MODEL_BASE, **changed}
        for name, data in files.items():
            (folder / name).write_bytes(data)
        target = folder / "model.zip" if kind == "archive" else folder
        try:
            with _hang_guard():
                load_model_files(target)
            event(f"{kind}: loaded")
        except ModelFileError:
            event(f"{kind}: ModelFileError")


def test_the_bases_load() -> None:
    """The unmutated files read: the fuzz starts from working inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(TIFF_BASES):
            (Path(tmp) / f"{i}.tif").write_bytes(data)
            read_image(Path(tmp) / f"{i}.tif")
        for name, data in MODEL_BASE.items():
            (Path(tmp) / name).write_bytes(data)
        (Path(tmp) / "model.zip").write_bytes(_archive(MODEL_BASE))
        assert load_model_files(tmp).config.network.model_channels == 8
        assert load_model_files(Path(tmp) / "model.zip").config.method == "hazematching"


pytestmark = pytest.mark.timeout(600 + EXAMPLES)
