"""Packaging: pyproject.toml's ranges admit the tested lock, environment.yml pins the lock's
versions, the compatibility locks are what CI installs; importing stays cheap."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement):
    return normalise(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def environment_yml():
    """(conda dependencies, pip requirements) of environment.yml, read without a YAML library.

    Both come from the top-level `dependencies:` list; the pip requirements are the items
    nested under its `- pip:` entry, editable installs (`-e .`) left out.
    """
    section, conda, pip, pip_indent = None, [], [], None
    for raw in (ROOT / "environment.yml").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if indent == 0:
            section, pip_indent = text.split(":", 1)[0], None
            continue
        if section != "dependencies" or not text.startswith("- "):
            continue
        item = text[2:].strip()
        if pip_indent is not None and indent > pip_indent:
            if not item.startswith("-e"):
                pip.append(item)
        elif item == "pip:":
            pip_indent = indent
        else:
            pip_indent = None
            conda.append(item)
    return conda, pip


def pins(requirements):
    """{normalised name: requirement without spaces}."""
    return {requirement_name(r): r.replace(" ", "") for r in requirements}


def lock(name="py3.11.txt"):
    """{normalised name: version} of a constraints file (`name==version` lines)."""
    found = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, version = line.split("==")
            found[normalise(package)] = version
    return found


def direct_requirements(python="3.11"):
    """pyproject.toml's own requirements (base, test and dev extras) that apply on `python`."""
    project = pyproject()["project"]
    everything = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    parsed = (Requirement(r) for r in everything)
    return [r for r in parsed if normalise(r.name) != "mindtrans"
            and (r.marker is None or r.marker.evaluate({"python_version": python}))]


def test_environment_yml_parser_finds_the_pip_section():
    conda, pip = environment_yml()
    assert "pip" in conda and any(item.startswith("python=") for item in conda)
    assert "conda-forge" not in conda  # a channel, not a dependency
    assert len(pip) >= len(pyproject()["project"]["dependencies"])


def test_pyproject_declares_ranges_that_a_preinstalled_mindspore_satisfies():
    """`pip install -e .` on an OpenI/ModelArts image must keep its MindSpore 2.3-2.6 and NumPy 1.x."""
    requirements = {normalise(r.name): r for r in direct_requirements()}
    for requirement in requirements.values():
        assert "==" not in str(requirement.specifier), f"{requirement} is pinned: pins belong in constraints/"
    for version in ("2.3.0", "2.4.1", "2.5.0", "2.6.0rc1", "2.10.0"):
        assert requirements["mindspore"].specifier.contains(version, prereleases=True), version
    assert requirements["numpy"].specifier.contains("1.26.4") and not requirements["numpy"].specifier.contains("2.0.0")


def test_the_lock_admits_every_direct_requirement():
    locked = lock()
    for requirement in direct_requirements():
        name = normalise(requirement.name)
        assert name in locked, f"{requirement} is missing from constraints/py3.11.txt"
        assert requirement.specifier.contains(locked[name]), f"constraints/py3.11.txt has {name}=={locked[name]}, " \
                                                             f"outside pyproject.toml's {requirement}"


@pytest.mark.parametrize("name", ["ms2.0.0-py3.9.txt", "ms2.7.0-py3.10.txt"])
def test_compatibility_locks_pin_their_mindspore_and_admit_the_base_requirements(name):
    locked, expected = lock(name), re.match(r"ms([\d.]+)-py([\d.]+)\.txt", name)
    assert locked["mindspore"] == expected.group(1)
    for requirement in direct_requirements(expected.group(2)):
        if normalise(requirement.name) in ("mindspore", "numpy", "pytest", "tomli", "download", "tqdm", "sacrebleu"):
            assert requirement.specifier.contains(locked[normalise(requirement.name)]), (name, str(requirement))


def test_environment_yml_pins_the_locked_version_of_every_direct_requirement():
    env, locked = pins(environment_yml()[1]), lock()
    for requirement in direct_requirements():
        name = normalise(requirement.name)
        assert name in env, f"{requirement.name} from pyproject.toml is missing from environment.yml"
        assert env[name] == f"{requirement.name}=={locked[name]}", (f"environment.yml pins {env[name]!r} but "
                                                                   f"constraints/py3.11.txt has {locked[name]}")


def test_environment_yml_pins_nothing_pyproject_does_not():
    declared = {normalise(r.name) for r in direct_requirements()}
    extra = sorted(set(pins(environment_yml()[1])) - declared)
    assert not extra, f"environment.yml pins {extra}, which pyproject.toml does not list"


def test_environment_python_is_within_requires_python():
    conda, _ = environment_yml()
    python = next(item.split("=", 1)[1] for item in conda if item.startswith("python="))
    major_minor = tuple(int(part) for part in python.split(".")[:2])
    requires = pyproject()["project"]["requires-python"]
    low = re.search(r">=\s*(\d+)\.(\d+)", requires)
    high = re.search(r"<\s*(\d+)\.(\d+)", requires)
    assert low and major_minor >= (int(low.group(1)), int(low.group(2))), requires
    assert high and major_minor < (int(high.group(1)), int(high.group(2))), requires


def run_python(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def test_import_mindtrans_does_not_import_mindspore():
    out = run_python(
        "import sys, mindtrans\n"
        "assert 'mindspore' not in sys.modules, 'import mindtrans imported mindspore'\n"
        "config = mindtrans.TransformerConfig.preset('tiny')  # the lazy names that need no MindSpore\n"
        "assert 'mindspore' not in sys.modules, 'mindtrans.TransformerConfig imported mindspore'\n"
        "print(mindtrans.__version__)\n")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", out.strip())


BLOCK_IMPORTS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'numpy', 'mindspore'}:
            raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, Block())
"""


def test_fetch_imports_without_numpy_or_mindspore():
    run_python(BLOCK_IMPORTS +
               "import mindtrans.fetch\n"
               "assert not {'numpy', 'mindspore'} & set(sys.modules)\n")


def test_the_import_blocker_works():
    """Guard for the test above: the blocker really stops numpy."""
    result = subprocess.run([sys.executable, "-c", BLOCK_IMPORTS + "import numpy\n"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "numpy is blocked" in result.stderr
