"""Where the repository is, for tests that run its files (the compose file, README scripts)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
