"""robopol, robopol.sim and robopol.real are one installable namespace, in editable and wheel installs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from robopol.errors import MissingExtraError, require_extra

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"robopol": "robopol", "sim": "robopol.sim", "real": "robopol.real", "configs": "robopol.configs"}


def packages_on_disk() -> set[str]:
    found = set()
    for folder, package in FOLDERS.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([package, *rel.parts]))
    return found


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_subpackage_on_disk_is_packaged():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    unpackaged = sorted(packages_on_disk() - listed)
    assert not unpackaged, f"add these to [tool.setuptools] packages in pyproject.toml: {unpackaged}"
    stale = sorted(listed - packages_on_disk())
    assert not stale, f"pyproject.toml lists packages that do not exist: {stale}"


def test_package_dirs_map_the_three_parts():
    mapping = pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping["robopol.sim"] == "sim" and mapping["robopol.real"] == "real"
    import robopol.real
    import robopol.sim

    assert Path(robopol.sim.__file__).parent == REPO / "sim"
    assert Path(robopol.real.__file__).parent == REPO / "real"


@pytest.mark.slow
def test_built_wheel_imports_all_three_parts(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("robopol-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in packages_on_disk():
        assert package.replace(".", "/") + "/__init__.py" in names, f"{package} missing from the wheel"
    yamls = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert {f"robopol/configs/{y}" for y in yamls} <= names, "config YAML files missing from the wheel"

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    # -S skips site-packages, so only the wheel's copy (not the editable checkout) can be imported.
    probe = (
        f"import sys; sys.path.insert(0, {str(target)!r}); import robopol, robopol.sim, robopol.real; "
        "import importlib.resources as r; "
        "assert r.files('robopol.configs').joinpath('train.yaml').is_file(); "
        "print(robopol.__file__, robopol.sim.__file__, robopol.real.__file__)"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.count(str(target)) == 3, out


def test_missing_extra_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"pip install 'robopol\[robot\]'") as err:
        require_extra("robopol_no_such_driver_module", "robot", "the UR driver")
    assert "the UR driver" in str(err.value) and isinstance(err.value, ImportError)


def test_extras_are_declared():
    extras = pyproject()["project"]["optional-dependencies"]
    assert {"dev", "robot", "isaaclab", "formats"} <= set(extras)
