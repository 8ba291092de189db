"""The house's shape: one direction of dependency between the layers, and a light `import blm_gym`."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "blm_gym"
# data -> sim -> (rewards, metrics, render) -> models -> (policies, train) -> (rollout, envs) -> rl -> (cli, demo)
LAYERS = {"config": 0, "atomic_files": 0, "data": 0, "sim": 1, "rewards": 2, "metrics": 2, "render": 2, "models": 3,
          "policies": 4, "train": 4, "rollout": 5, "envs": 5, "rl": 6, "cli": 7, "demo": 7}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 and parts[0] == "blm_gym" else None


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        mine = layer(".".join(rel.parts))
        if mine is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions count too
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            upward += [f"{rel} imports {n}" for n in names if (layer(n) or 0) > mine]
    assert not upward, "\n".join(upward)


def test_import_blm_gym_is_light():
    code = ("import sys, blm_gym; print(sorted(m for m in ('torch', 'h5py', 'shapely', 'blm_gym.metrics.report', "
            "'blm_gym.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
