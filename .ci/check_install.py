"""Check that the installed mpigrad is the whole source tree, and is not the tree itself.

Run with the venv's python from any directory (`make venv` does). It fails when:
- `mpigrad` resolves into the source tree (tests would then exercise the tree, not the wheel);
- a module of the tree is missing from the installed package (a folder without an
  __init__.py is silently left out by `packages = find:`; mpigrad/kernels is a symlink
  to ../kernels and must ship as mpigrad.kernels), or a symlink in the tree is broken;
- the PEP 561 marker py.typed is missing (setup.cfg's package_data ships it).

It locates the package with importlib.util.find_spec, which does not run mpigrad's code.
"""

import importlib.util
import os
import sys
from pathlib import Path

TREE = Path(__file__).resolve().parent.parent / "mpigrad"


def modules(root):
    """Relative paths of the .py files and py.typed markers under root, following symlinked
    folders."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = Path(dirpath).relative_to(root)
        found.update(
            (rel / name).as_posix()
            for name in filenames
            if name.endswith(".py") or name == "py.typed"
        )
    return found


def main():
    spec = importlib.util.find_spec("mpigrad")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "check_install: mpigrad is not installed as a package (does mpigrad/__init__.py exist?)"
        )
    installed = Path(next(iter(spec.submodule_search_locations))).resolve()
    print(f"check_install: mpigrad is {installed}")
    if installed == TREE.resolve():
        sys.exit(
            f"check_install: mpigrad resolves into the source tree ({installed}), "
            "not the installed wheel"
        )
    broken = sorted(
        str(path.relative_to(TREE.parent))
        for path in TREE.rglob("*")
        if path.is_symlink() and not path.exists()
    )
    if broken:
        sys.exit(f"check_install: broken symlink(s) in the tree: {', '.join(broken)}")
    missing = sorted(modules(TREE) - modules(installed))
    if missing:
        sys.exit(
            "check_install: in the tree but not installed (missing __init__.py?):\n  "
            + "\n  ".join(f"mpigrad/{m}" for m in missing)
        )
    print(f"check_install: {len(modules(installed))} modules installed, none missing")


if __name__ == "__main__":
    main()
