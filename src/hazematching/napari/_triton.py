"""Load triton before anything of ours can pull it in next to napari's OpenGL.

Mesa's OpenGL drivers (llvmpipe, radeonsi, …) load the system's libLLVM when napari creates its
canvas. triton (a dependency of Linux torch builds, imported by ``torch._dynamo``, which
torchvision and Lightning import) carries its own LLVM; loaded after the system's, the dynamic
linker binds its LLVM calls to the other version and the process segfaults (seen with Mesa
22.3 / LLVM 15 and triton 3.8). Loaded first, or with ``RTLD_DEEPBIND`` so that it binds to its
own copy, both coexist.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def llvm_loaded() -> bool:
    """Whether a shared libLLVM is mapped into this process (Linux; False elsewhere)."""
    maps = Path("/proc/self/maps")
    return maps.exists() and "libLLVM" in maps.read_text()


def preload_triton() -> None:
    """Import triton now (if installed and not yet imported), deep-bound if an LLVM is loaded."""
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    flags = sys.getdlopenflags()
    if llvm_loaded():
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import triton  # noqa: F401
    except ImportError:
        pass  # torch copes with a broken triton the same way
    finally:
        sys.setdlopenflags(flags)
