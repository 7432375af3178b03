"""Packaging: pyproject.toml and environment.yml pin the same versions; importing stays cheap."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


def test_environment_yml_parser_finds_the_pip_section():
    conda, pip = environment_yml()
    assert "pip" in conda and any(item.startswith("python=") for item in conda)
    assert "conda-forge" not in conda  # a channel, not a dependency
    assert len(pip) >= len(pyproject()["project"]["dependencies"])


@pytest.mark.parametrize("section", ["dependencies", "dev"])
def test_pyproject_requirements_are_pinned_identically_in_environment_yml(section):
    project = pyproject()["project"]
    requirements = project["dependencies"] if section == "dependencies" else project["optional-dependencies"]["dev"]
    env = pins(environment_yml()[1])
    for name, requirement in pins(requirements).items():
        assert "==" in requirement, f"{requirement!r} in pyproject.toml is not pinned with =="
        assert name in env, f"{requirement!r} from pyproject.toml [{section}] is missing from environment.yml"
        assert env[name] == requirement, (f"environment.yml pins {env[name]!r} but pyproject.toml "
                                          f"[{section}] pins {requirement!r}")


def test_environment_yml_pins_nothing_pyproject_does_not():
    project = pyproject()["project"]
    declared = pins(project["dependencies"]) | pins(project["optional-dependencies"]["dev"])
    extra = sorted(set(pins(environment_yml()[1])) - set(declared))
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
