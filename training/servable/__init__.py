"""The files every version folder carries: ``model.py`` (Triton's entry point) and ``runtime.py`` (the model).

Both are copied verbatim into each version. ``runtime`` is importable here so training runs the served code in
process; ``model`` imports ``triton_python_backend_utils`` and only runs inside Triton.
"""

from pathlib import Path

SERVABLE_DIR = Path(__file__).resolve().parent
SERVABLE_FILES = ("model.py", "runtime.py")
