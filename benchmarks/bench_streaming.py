"""Peak memory and throughput of streaming prediction of large images, on this machine.

For each image side (default 2048 and 8192 px, one plane, float32), in fresh processes:
  (1) an OME-Zarr input is written a band of rows at a time (so that no process ever holds it);
  (2) ``Model.predict_file`` dehazes it into OME-Zarr MMSE and std with a tiny network of
      initial weights (prediction cost does not depend on the weights), on the CPU.
Printed per size: the image's size as float32 × 3 (input, MMSE, std: what a prediction holding
whole arrays would need at least); the predicting process's resident memory after loading the
model (Python and torch), its peak after predicting one tile-sized image in one full batch (adds
the network's working memory), and its peak after the whole image (ru_maxrss); the latter's
excess over the one-tile peak, which is what the image's size adds, as a fraction of the ×3
size; and the throughput in output megapixels per second. Streaming holds a few bands of tile
rows, so that excess must stay far below the ×3 size and grow only with the image's width.

Usage:
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_streaming.py
    python benchmarks/bench_streaming.py --sizes 1024,4096 --n-samples 2 --tile 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The tiny network (its cost per pixel is what the throughput measures; weights unused).
TINY_NET = {"model_channels": 8, "channel_mult": [1, 1, 2, 2, 2], "attention_downsample": [16],
            "num_res_blocks": 1}


def _rss_now_mib() -> float:
    """Current resident memory of this process (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_input(path: str, side: int) -> dict:
    """A side × side float32 OME-Zarr (blobs on a haze), written 256 rows at a time."""
    from hazematching.ngff import create_ome_zarr

    array = create_ome_zarr(path, (side, side), "YX", {"Y": 0.1, "X": 0.1}, name="bench")
    rng = np.random.default_rng(0)
    xx = np.arange(side, dtype=np.float32)
    for y0 in range(0, side, 256):
        yy = np.arange(y0, min(side, y0 + 256), dtype=np.float32)[:, None]
        band = 400 + 200 * np.sin(yy / 37.0) * np.cos(xx / 23.0)
        array[y0:y0 + len(yy)] = band + rng.normal(0, 10, band.shape).astype(np.float32)
    return {"peak_rss_mib": _peak_rss_mib()}


def predict(model_dir: str, src: str, out: str, n_samples: int) -> dict:
    """Dehaze `src` into OME-Zarr outputs in `out`; peak memory and time of this process.

    Before, one tile is predicted in one full network batch: its peak is what the network and
    the allocator need whatever the image, so the final peak's excess over it is what the
    image's size adds."""
    from hazematching.api import load_model

    model = load_model(model_dir)
    baseline = _rss_now_mib()
    s = model.config.sampling
    # one full network batch: as many samples of the tile as the batch holds
    model.predict(np.full((s.tile_size, s.tile_size), 400, np.float32),
                  n_samples=max(n_samples, s.batch_size), device="cpu")
    one_tile = _peak_rss_mib()
    t = time.perf_counter()
    model.predict_file(src, out, n_samples=n_samples, output_format="zarr", device="cpu")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "baseline_rss_mib": baseline, "one_tile_peak_mib": one_tile,
            "peak_rss_mib": _peak_rss_mib()}


def make_model(folder: str, tile: int, n_time_points: int, batch: int) -> None:
    from hazematching.config import ModelConfig
    from hazematching.data.normalization import ChannelStats, Normalizer
    from hazematching.methods import build_method
    from hazematching.model_io import save_model

    cfg = ModelConfig.from_dict({
        "network": TINY_NET, "sampling": {"tile_size": tile, "tile_overlap": 32,
                                          "n_time_points": n_time_points, "batch_size": batch}})
    norm = Normalizer("meanstd", ChannelStats(400.0, 150.0), (ChannelStats(400.0, 150.0),))
    save_model(folder, build_method(cfg), norm)


def _child(phase: str, *args: str) -> dict:
    """Run one phase in a fresh interpreter (its own peak memory) and return its report."""
    out = subprocess.run([sys.executable, __file__, "--phase", phase, *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2048,8192", help="image sides (px), comma-separated")
    ap.add_argument("--n-samples", type=int, default=2)
    ap.add_argument("--n-time-points", type=int, default=2, help="ODE grid points (>= 2)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "write":
        print(json.dumps(write_input(a.args[0], int(a.args[1]))))
        return
    if a.phase == "predict":
        print(json.dumps(predict(a.args[0], a.args[1], a.args[2], int(a.args[3]))))
        return
    sides = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_streaming.") as tmp:
        root = Path(tmp)
        make_model(str(root / "model"), a.tile, a.n_time_points, a.batch)
        print(f"tiny network {TINY_NET}, {a.n_samples} samples, {a.n_time_points} time points, "
              f"{a.tile}-px tiles, batch {a.batch}, CPU")
        print(f"{'side':>6} {'f32 x3 MiB':>11} {'loaded MiB':>11} {'1-tile MiB':>11} "
              f"{'peak MiB':>9} {'excess/x3':>10} {'s':>8} {'out MP/s':>9}")
        for side in sides:
            src = root / f"in{side}.ome.zarr"
            _child("write", str(src), str(side))
            rep = _child("predict", str(root / "model"), str(src), str(root / f"out{side}"),
                         str(a.n_samples))
            x3 = 3 * side * side * 4 / 2**20
            excess = rep["peak_rss_mib"] - rep["one_tile_peak_mib"]
            print(f"{side:>6} {x3:>11.0f} {rep['baseline_rss_mib']:>11.0f} "
                  f"{rep['one_tile_peak_mib']:>11.0f} {rep['peak_rss_mib']:>9.0f} "
                  f"{excess / x3:>10.3f} {rep['seconds']:>8.1f} "
                  f"{side * side / 1e6 / rep['seconds']:>9.3f}")


if __name__ == "__main__":
    main()
