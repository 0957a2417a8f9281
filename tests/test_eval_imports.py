"""Importing swaa.eval, swaa.tasks and swaa.generation does nothing but define names: no logging set-up, and no
file of the package read (presets, grid) until a function asks for it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import importlib, logging, pkgutil, sys
from pathlib import Path
package = Path("swaa").resolve()
opened = []
sys.addaudithook(lambda event, args: event == "open" and isinstance(args[0], str) and opened.append(args[0]))
import swaa.eval, swaa.tasks, swaa.generation
for pkg in (swaa.eval, swaa.tasks):
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
data = [p for p in opened if Path(p).resolve().is_relative_to(package) and not p.endswith((".py", ".pyc"))]
assert not data, f"read at import: {data}"
assert not logging.root.handlers and logging.root.level == logging.WARNING, logging.root
"""


def test_importing_eval_and_tasks_has_no_side_effects():
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
