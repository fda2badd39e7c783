"""Prediction spread over processes: two CPU ranks (gloo) through the real command line, compared
with one process; the settings refused before any work; Lightning's one-device path in-process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_pairs
from typer.testing import CliRunner

from hazematching import HazeMatching, ModelConfig
from hazematching.cli import app
from hazematching.distributed import Ranks, start
from hazematching.io import LOCK_FILE, folder_lock, write_tiff

SAMPLING = ["--n-samples", "2", "--seed", "7"]
TWO_CPU_RANKS = ["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from conftest import TINY

    out = tmp_path_factory.mktemp("model")
    cfg = ModelConfig.from_dict(TINY).with_overrides({"training.epochs": 1})
    HazeMatching(cfg).fit(make_pairs(3), make_pairs(2, seed=5), out_dir=out)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Four small files, one of them a 2-plane stack."""
    folder = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(3)
    for name, shape in {"a": (40, 36), "b": (2, 40, 36), "c": (36, 44), "d": (40, 40)}.items():
        write_tiff(folder / f"{name}.tif", rng.uniform(300, 700, shape).astype(np.uint16),
                   "YX" if len(shape) == 2 else "ZYX")
    return folder


def _predict_on_two_ranks(model_dir: Path, inputs: Path, out: Path, *options: str
                          ) -> subprocess.CompletedProcess:
    """`hazematching predict … --devices 2` in a fresh process: Lightning re-runs the command
    for rank 1, as it would for a user (so it cannot run inside pytest's process)."""
    command = Path(sys.executable).with_name("hazematching")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(command), "predict", str(model_dir), str(inputs),
                           "--out", str(out), *SAMPLING, *TWO_CPU_RANKS, *options],
                          capture_output=True, text=True, timeout=300, env=env, cwd=out.parent)


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(model_dir, inputs, tmp_path):
    ref, out = tmp_path / "one", tmp_path / "two"
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(inputs), "--out", str(ref),
                                 *SAMPLING])
    assert r.exit_code == 0, r.output
    # An earlier run finished a.tif and was killed while writing b.tif.
    out.mkdir()
    for f in ref.glob("a_*.tif"):
        shutil.copy2(f, out / f.name)
    before = (out / "a_mmse.tif").stat()
    (out / ".b_mmse.tif.0000abcd.partial").write_bytes(b"half")

    proc = _predict_on_two_ranks(model_dir, inputs, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    written = {line.split()[2]: line.split()[1] for line in lines
               if line.startswith("[rank ") and " → " in line}
    # the remaining files dealt round robin, each predicted once
    assert written == {str(inputs / "b.tif"): "0/2]", str(inputs / "c.tif"): "1/2]",
                       str(inputs / "d.tif"): "0/2]"}
    assert sum(" → " in line for line in lines) == 3
    assert sum("skipped, its outputs exist" in line for line in lines) == 1
    assert [line for line in lines if line.startswith("done:")] == [
        f"done: 3 predicted by 2 processes (rank 0: 2, rank 1: 1), 1 skipped; outputs in {out}"]
    # bit for bit the single process's files; the finished one untouched; nothing left over
    names = sorted(p.name for p in ref.iterdir() if not p.name.startswith("."))
    assert len(names) == 8
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, *names])
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    after = (out / "a_mmse.tif").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
            if f.is_file()}


@pytest.mark.slow
def test_two_ranks_split_the_planes_of_one_stack_into_the_same_zarr(model_dir, tmp_path):
    import zarr

    stack = tmp_path / "stack.tif"
    write_tiff(stack, np.random.default_rng(4).uniform(300, 700, (4, 40, 36)).astype(np.uint16),
               "ZYX")
    ref, out = tmp_path / "one", tmp_path / "two"
    # 4 tiles × 2 samples a plane in batches of 5: one batch of the single process holds
    # planes 1 and 2, which the two ranks predict apart.
    zarr_out = ["--format", "zarr", "--save-samples", "--batch-size", "5"]
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(stack), "--out", str(ref),
                                 *SAMPLING, *zarr_out])
    assert r.exit_code == 0, r.output

    proc = _predict_on_two_ranks(model_dir, stack, out, *zarr_out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    shares = sorted(line.split(" → ")[0] for line in lines if " → " in line)
    assert shares == [f"[rank 0/2] {stack} planes 0–1", f"[rank 1/2] {stack} planes 2–3"]
    assert [line for line in lines if line.startswith("done:")] == [
        f"done: 1 predicted by 2 processes (rank 0: 1, rank 1: 1; 1 split by planes), "
        f"0 skipped; outputs in {out}"]
    # every chunk and metadata file the single process's, to the byte; no temporary left
    names = [f"stack_{k}.ome.zarr" for k in ("mmse", "samples", "std")]
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, *names])
    for name in names:
        assert _tree(out / name) == _tree(ref / name), name
    mmse = zarr.open_array(str(out / "stack_mmse.ome.zarr" / "0"), mode="r")[:]
    assert mmse.shape == (4, 40, 36) and (mmse != 0).all()
    assert not np.array_equal(mmse[0], mmse[3])


@pytest.mark.slow
def test_a_rank_failing_on_its_planes_leaves_no_output(model_dir, tmp_path):
    from hazematching.ngff import create_ome_zarr

    stack = tmp_path / "stack.ome.zarr"
    create_ome_zarr(stack, (4, 40, 36), "ZYX", dtype=np.uint16)[:] = 500
    (stack / "0" / "3" / "0" / "0").write_bytes(b"not a chunk")  # in rank 1's share only
    out = tmp_path / "out"
    proc = _predict_on_two_ranks(model_dir, stack, out, "--format", "zarr")
    assert proc.returncode != 0
    # rank 0, whose planes were fine, names rank 1's error; rank 1 its own
    errors = sorted(line.split(" (")[0] for line in proc.stderr.splitlines()
                    if line.startswith("error: "))
    assert errors == [f"error: {stack}: cannot read the pixel data",
                      f"error: rank 1 of 2 failed: ImageError: {stack}: cannot read the pixel "
                      f"data"], proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing renamed or left


ERRORS_SCRIPT = """
import json, sys
from pathlib import Path
from hazematching import load_model
from hazematching.distributed import this_process
model, inputs, busy, out = sys.argv[1:]
m = load_model(model)
files = sorted(Path(inputs).glob("*.tif"))
report = {}
for name, folder in [("busy", busy), ("broken", out)]:
    try:
        got = m.predict_files(files, folder, n_samples=2, devices=2, accelerator="cpu",
                              strategy="ddp")
        report[name] = ["ok", sorted((r.source.name, r.rank) for r in got)]
    except Exception as err:
        report[name] = [type(err).__name__, str(err)]
Path(f"rank{this_process().rank}.json").write_text(json.dumps(report))
"""


@pytest.mark.slow
def test_two_ranks_refuse_a_busy_folder_and_report_a_failed_rank(model_dir, inputs, tmp_path):
    import json

    src = tmp_path / "in"
    shutil.copytree(inputs, src, ignore=shutil.ignore_patterns("d.tif"))
    (src / "z.tif").write_bytes((inputs / "d.tif").read_bytes()[:300])  # truncated
    busy, out = tmp_path / "busy", tmp_path / "out"
    script = tmp_path / "predict_twice.py"
    script.write_text(ERRORS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with folder_lock(busy, "the test"):  # another run's rank 0
        proc = subprocess.run([sys.executable, str(script), str(model_dir), str(src), str(busy),
                               str(out)], capture_output=True, text=True, timeout=300,
                              env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_rank = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    # The folder another run holds: refused on both ranks, neither left waiting.
    for r in by_rank.values():
        assert r["busy"][0] == "FolderInUseError"
        assert f"{busy} is in use by another hazematching process" in r["busy"][1]
    assert sorted(p.name for p in busy.iterdir()) == [LOCK_FILE]
    # Rank 1 fails on z.tif (after b.tif); rank 0 finishes its files, then reports it.
    assert by_rank[1]["broken"][0] == "ImageError" and "z.tif" in by_rank[1]["broken"][1]
    kind, message = by_rank[0]["broken"]
    assert kind == "RankFailedError"
    assert message.startswith(f"rank 1 of 2 failed: while processing {src / 'z.tif'}: "
                              f"ImageError: ")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LOCK_FILE] + [f"{n}_{k}.tif" for n in "abc" for k in ("mmse", "std")])


def test_one_device_through_lightning_equals_a_plain_run(model_dir, inputs, tmp_path):
    from hazematching import load_model

    m = load_model(model_dir)
    files = sorted(inputs.iterdir())[:2]
    plain = list(m.predict_files(files, tmp_path / "plain", n_samples=2))
    fabric = list(m.predict_files(files, tmp_path / "fabric", n_samples=2, devices=1,
                                  accelerator="cpu"))
    assert [(r.source, r.skipped, r.rank) for r in fabric] == [(f, False, 0) for f in files]
    for a, b in zip(plain, fabric, strict=True):
        for kind in a.outputs:
            assert a.outputs[kind].read_bytes() == b.outputs[kind].read_bytes()


@pytest.mark.parametrize("kwargs,message", [
    ({"num_nodes": 2}, "give devices too"),
    ({"devices": 2, "accelerator": "cpu", "strategy": "ddp_spawn"}, "use strategy 'ddp'"),
    ({"devices": 2, "accelerator": "nope"}, r"accelerator='nope'.*invalid accelerator"),
])
def test_start_refuses_settings_before_any_process(kwargs, message):
    with pytest.raises(ValueError, match=message):
        start(**kwargs)


def test_a_launched_process_without_devices_is_refused(monkeypatch):
    assert start() == Ranks()
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match=r"one of 4 that a launcher started.*--devices N"):
        start()


def test_one_device_per_process_or_devices(model_dir, inputs, tmp_path):
    from hazematching import load_model

    with pytest.raises(ValueError, match=r"device='cpu' is the one device.*accelerator"):
        next(load_model(model_dir).predict_files([inputs / "a.tif"], tmp_path / "o",
                                                 device="cpu", devices=2))
    assert not (tmp_path / "o").exists()


def test_ranks_deal_items_round_robin():
    ranks = [Ranks(r, 3) for r in range(3)]
    shares = [[i for i in range(7) if rk.owns(i)] for rk in ranks]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert Ranks().from_rank_zero(lambda: 5) == 5 and Ranks().gather("x") == ["x"]
