"""napari plugin (``pip install 'hazematching[napari]'``): dehaze and train from the viewer.

* :mod:`.core` — presets, layer checks, result layers and the long tasks, with no Qt;
* :mod:`.widgets` — the dock widgets (thin Qt on top of :mod:`.core`);
* :mod:`.sample_data` — a simulated widefield/confocal pair;
* ``napari.yaml`` — the npe2 manifest that registers them.

Importing the package first loads triton, which would otherwise crash next to Mesa's OpenGL
(see :mod:`._triton`).
"""

from hazematching.napari._triton import preload_triton

preload_triton()
