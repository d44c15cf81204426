"""A stranger's Celery project with taskpool installed from a wheel of this repository, into
a fresh virtualenv; its dependencies come from the test environment (a ``.pth`` file), so
nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO_ROOT


@dataclass
class UserProject:
    root: Path
    python: Path
    site_packages: Path
    #: What installing taskpool added to site-packages.
    added: set[str]

    def env(self, redis_url: str, **extra: str) -> dict[str, str]:
        """The user's environment: their settings module and taskpool's both point at it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKPOOL_", "CELERY_"))}
        env.update({"PROJECT_REDIS_URL": redis_url, "TASKPOOL_BROKER_URL": redis_url, **extra})
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(
        self, *args: str | Path, redis_url: str, timeout: float = 120, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args], cwd=self.root, env=self.env(redis_url, **extra),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


def install_project(base: Path, files: dict[str, str]) -> UserProject:
    """``files`` (path -> text, dedented) as a project in ``base``, beside a venv holding
    taskpool installed from its wheel and a ``taskpool`` command."""
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, REPO_ROOT],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    before = set(os.listdir(site_packages))
    wheel = next(wheels.glob("celery_taskpool-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", site_packages, wheel],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    added = {name for name in set(os.listdir(site_packages)) - before if name != "bin"}
    # The dependencies (Celery, redis, ...) from this environment, behind the new venv's own.
    (site_packages / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"])
    (venv / "bin" / "taskpool").write_text(
        f"#!{python}\nimport sys\nfrom taskpool.cli import main\nsys.exit(main())\n"
    )
    (venv / "bin" / "taskpool").chmod(0o755)
    root = base / "project"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return UserProject(root, python, site_packages, added)
