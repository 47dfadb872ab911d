"""Where the checkout's non-Python parts are: the local stack runs from a clone of the repository."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
