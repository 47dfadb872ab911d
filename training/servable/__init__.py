"""The files every version folder carries: ``model.py`` (Triton's entry point), ``runtime.py`` (preprocessing,
engines, prediction) and ``network.py`` (the torch network, imported only by a version running on torch).

All are copied verbatim into each version. ``runtime`` and ``network`` are importable here so training builds the
served network and runs the served code in process; ``model`` imports ``triton_python_backend_utils`` and only runs
inside Triton.
"""

from pathlib import Path

SERVABLE_DIR = Path(__file__).resolve().parent
SERVABLE_FILES = ("model.py", "runtime.py", "network.py")
