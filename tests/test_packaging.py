"""What a newcomer installs: bounded requirements that agree between the two install paths, and a wheel
that holds the whole program, so that `pip install .` gives console scripts that start anywhere.

The wheel is built offline (``--no-build-isolation --no-index``: setuptools comes from requirements.txt) from
a copy of the repository, so the checkout itself is never written to. Running the console scripts takes about
ten seconds and is marked slow; .ci/run runs it after the default suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, write_corpus
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    tomllib = pytest.importorskip("tomli")

# Root folders that are not part of the installed program (development tools, not importable by it).
NOT_INSTALLED = {"tests", "benchmarks"}
# What a copy of the repository leaves out: VCS data, build and run outputs, downloaded data sets.
JUNK = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              ".pytest_cache", "logs", "outputs", "ptb", "wikitext2", "cifar-10-batches-py", "MNIST")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements_txt() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return [line for line in lines if line]


def canonical(requirements: list[str]) -> dict[str, str]:
    """``{normalised name: 'name[extras]specifier'}``, so spelling and order do not matter."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name not in out, f"{name} is listed twice"
        out[name] = f"{name}{sorted(req.extras) or ''}{sorted(str(s) for s in req.specifier)}"
    return out


# ------------------------------------------------------------------------------ requirements
def test_requirements_txt_is_pyproject_dependencies_plus_the_test_extra() -> None:
    project = pyproject()["project"]
    declared = canonical(project["dependencies"] + project["optional-dependencies"]["test"])
    assert canonical(requirements_txt()) == declared


def test_every_requirement_has_a_lower_and_an_upper_bound() -> None:
    """An unbounded range lets a new major release in unseen (pytest 9 broke a test this way)."""
    for text in [*requirements_txt(), *pyproject()["build-system"]["requires"]]:
        ops = {s.operator for s in Requirement(text).specifier}
        assert "==" in ops or ({">=", ">"} & ops and {"<", "<="} & ops), f"{text}: needs a lower and an upper bound"


def test_the_build_backend_is_the_setuptools_the_tests_install() -> None:
    """The packaging test builds without isolation, with the setuptools requirements.txt installs."""
    build = canonical(pyproject()["build-system"]["requires"])
    assert build["setuptools"] == canonical(requirements_txt())["setuptools"]


# ------------------------------------------------------------------------------------- wheel
def repository_modules() -> set[str]:
    """What the program is made of: every root module and root package (a folder with ``__init__.py``)."""
    modules = {p.stem for p in ROOT.glob("*.py")}
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_INSTALLED
    return modules | packages


def test_pyproject_names_exactly_the_root_modules() -> None:
    """setuptools skips a listed module that does not exist without failing the build."""
    assert set(pyproject()["tool"]["setuptools"]["py-modules"]) == {p.stem for p in ROOT.glob("*.py")}


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run a command; its output, or a failure that shows it."""
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, work / "src", ignore=JUNK)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--wheel-dir", str(work / "dist"), str(work / "src")], cwd=work)
    (built,) = (work / "dist").glob("wpl_enas-*.whl")
    return built


def test_the_wheel_holds_every_module_and_package_of_the_repository_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0].removesuffix(".py") for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == repository_modules()
    sources = {p.relative_to(ROOT).as_posix() for name in top if (ROOT / name).is_dir()
               for p in (ROOT / name).rglob("*.py")}
    assert sources <= set(names), f"missing from the wheel: {sorted(sources - set(names))}"


def test_the_wheel_declares_the_console_scripts_of_pyproject(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(entry_points).decode()
    for script, target in pyproject()["project"]["scripts"].items():
        assert f"{script} = {target}" in text
        assert target.split(":")[0] in repository_modules()


@pytest.mark.slow
def test_every_console_script_starts_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    """``pip install .`` as a user gets it: the installed copy only (not this checkout), run from elsewhere."""
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
         str(wheel)], cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    where = run([sys.executable, "-c", "import main, distributed; print(main.__file__, distributed.__file__)"],
                cwd=elsewhere, env=env)
    assert all(Path(f).is_relative_to(target) for f in where.split()), where
    for script in pyproject()["project"]["scripts"]:
        assert "usage:" in run([str(target / "bin" / script), "--help"], cwd=elsewhere, env=env)

    write_corpus(tmp_path / "data" / "tiny")
    run([str(target / "bin" / "wpl-enas"), "--dataset=tiny", f"--data_dir={tmp_path / 'data'}", "--comment=pkg",
         f"--log_dir={tmp_path / 'logs'}", "--num_gpu=0", "--max_epoch=1", "--shared_max_step=2",
         "--num_batch_per_iter=1", "--train_controller=True", "--controller_max_step=1", "--shared_embed=8",
         "--shared_hid=8", "--batch_size=4", "--num_blocks=2", "--derive_num_sample=2", "--forgetting_eval_batches=1"],
        cwd=elsewhere, env=env, timeout=300)
    run_dir = tmp_path / "logs" / "tiny_pkg"
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0]
    assert (run_dir / "checkpoints" / "latest.pt").is_file() and (run_dir / "best_arch.json").is_file()
    assert not (elsewhere / "logs").exists()  # --log_dir was honoured, nothing landed in the working directory
