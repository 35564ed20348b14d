"""The images' package sets as fresh venvs (there is no Docker engine here): `ray-node`, as
deploy/Dockerfile installs it (the pinned torch, then the project with its `cluster` extra), and
`mlflow-server`, as deploy/mlflow/Dockerfile does (the `server` extra, then its UI page
written to open on runs tables).

Each is built once into .venv-images/NAME and rebuilt only when what it installs changes: its
own requirement lists, not any other edit of pyproject.toml. `make image-envs` (which `make
test` runs first) builds both side by side: `python -m tests.image_envs [NAME ...]`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / ".venv-images"


def torch_spec() -> str:
    """The torch build the Makefile installs first (TORCH_SPEC)."""
    found = re.search(r"^TORCH_SPEC \?= (\S+)", (REPO / "Makefile").read_text(), re.M)
    if found is None:
        raise RuntimeError("TORCH_SPEC not found in the Makefile")
    return found[1]


def project() -> dict[str, list[str]]:
    """The project's dependencies ("") and each extra's, as pyproject.toml lists them."""
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"": table["dependencies"], **table["optional-dependencies"]}


def installs(name: str) -> list[list[str]]:
    """The `pip install` argument lists that make image NAME, in order."""
    if name == "ray-node":
        return [[torch_spec()], ["-e", f"{REPO}[cluster]"]]
    if name == "mlflow-server":
        return [extra_requirements("server")]
    raise ValueError(f"no image {name!r}; images: {', '.join(IMAGES)}")


def extra_requirements(extra: str) -> list[str]:
    """An extra's requirements, as the images read them (deploy/requirements.py)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "requirements.py"), extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


# What deploy/mlflow/Dockerfile runs after its install: MLflow's UI page opening on runs.
UI_PAGE = REPO / "pipeline" / "tracking" / "ui_page.py"


def requirements(name: str) -> dict[str, object]:
    """Everything an image's venv depends on: what it installs, the requirement lists of the
    project and extras it installs, the Python that runs it (and the UI page script run after
    the server's install)."""
    lists = project()
    needs = {"": lists[""], "cluster": lists["cluster"]} if name == "ray-node" else {}
    wanted: dict[str, object] = {"installs": installs(name), "lists": needs}
    if name == "mlflow-server":
        wanted["ui_page"] = hashlib.sha256(UI_PAGE.read_bytes()).hexdigest()
    return {**wanted, "python": sys.version.split()[0]}


def build(name: str) -> Path:
    """The bin folder of image NAME's venv, built now if missing or out of date. One builder
    at a time per image, across processes (pytest workers, make)."""
    folder = FOLDER / name
    stamp = folder / ".installed"
    wanted = json.dumps(requirements(name), sort_keys=True)
    FOLDER.mkdir(exist_ok=True)
    with (FOLDER / f".{name}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_text() != wanted:
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
            for arguments in installs(name):
                # Without compiling every module to bytecode, most of an install's CPU (ray-node
                # 87 s of CPU with it, 46 s without; mlflow-server 46 s, 24 s): the processes
                # run from it write the bytecode of what they import (`running_env`).
                pip_install = ["-m", "pip", "install", "-q", "--no-compile"]
                subprocess.run(
                    [str(folder / "bin" / "python"), *pip_install, *arguments],
                    check=True,
                    timeout=1800,
                )
            if name == "mlflow-server":
                subprocess.run([str(folder / "bin" / "python"), str(UI_PAGE)], check=True)
            stamp.write_text(wanted)
    return folder / "bin"


def running_env(bin_folder: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` for the processes of an image's venv: its bin folder first on PATH, and the
    bytecode of what they import written once into the venv (as an image's own install holds
    it), not compiled again by each process."""
    kept = {key: value for key, value in env.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**kept, "PATH": f"{bin_folder}:{env.get('PATH', '/usr/bin:/bin')}"}


IMAGES = ("ray-node", "mlflow-server")

if __name__ == "__main__":
    names = sys.argv[1:] or list(IMAGES)
    with ThreadPoolExecutor(len(names)) as pool:
        for name, bin_folder in zip(names, pool.map(build, names), strict=True):
            print(f"{name}: {bin_folder}")
