"""The package's shape: each module imports only modules below it in `LAYERS`, and functions stay short."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mindtrans"

# The flow fetch -> data -> batching -> steps -> loop -> run directory -> bundle -> CLI, with
# the model and search (decoding) beside it: a module may import only those before it. The
# searches' model interface (search_steps) and its NumPy implementation come before the
# MindSpore layers, which must never be needed to translate with NumPy.
LAYERS = [
    "files", "compat", "multi30k_digests", "fetch", "config", "data", "subword", "corpus", "batching", "device",
    "metrics", "search_steps", "numpy_steps",
    "layers", "attention", "encoder", "decoder", "model", "params", "step_graph", "decode", "loss", "train_config",
    "schedule", "steps", "checkpoint_reader", "checkpoint", "rundir", "averaging", "distributed", "training",
    "bundle", "exported", "export", "evaluate", "demo", "cli", "__main__",
]
LONGEST_FUNCTION = 60  # lines, docstring included


def mindtrans_imports(path: Path) -> set:
    """The mindtrans modules that `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mindtrans":
            if node.module == "mindtrans":
                found |= {alias.name for alias in node.names if alias.name != "__version__"}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("mindtrans.")}
    return found


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS), (f"add {sorted(modules - set(LAYERS))} to LAYERS; "
                                    f"drop {sorted(set(LAYERS) - modules)}")


@pytest.mark.parametrize("module", LAYERS)
def test_modules_import_only_the_layers_below_them(module):
    imports = mindtrans_imports(PACKAGE / f"{module}.py")
    climbs = sorted(dep for dep in imports if LAYERS.index(dep) >= LAYERS.index(module))
    assert not climbs, f"mindtrans/{module}.py imports {climbs}, which come after it in the flow"


def test_scoring_and_bundles_do_not_import_training():
    for module in ("evaluate", "bundle", "decode"):
        assert "training" not in mindtrans_imports(PACKAGE / f"{module}.py"), module


def test_functions_are_short():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions longer than {LONGEST_FUNCTION} lines: {long}"


def test_run_directory_file_names_have_one_owner():
    """Only rundir.py spells the run directory's file names."""
    from mindtrans.rundir import RunDir

    names = [name for name in RunDir.FILES if name != RunDir.EPOCHS]
    spelled = [f"{path.name}: {name}" for path in sorted(PACKAGE.glob("*.py")) if path.name != "rundir.py"
               for name in names if f'"{name}"' in path.read_text()]
    assert not spelled, spelled
