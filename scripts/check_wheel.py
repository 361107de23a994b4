"""Check that a wheel of the project holds every tracked data file of its packages.

Usage: python scripts/check_wheel.py WHEEL  (from the repository root)

A data file (anything but ``*.py``) that git tracks inside one of the packages but that the wheel
lacks means a ``[tool.setuptools.package-data]`` glob in pyproject.toml is missing: an editable
install would still find the file, a real install would not.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

PACKAGES = ("clips_tower", "clips_cli", "pretrain", "eval", "llava_integration", "benchmarks")
NOT_PACKAGE_DATA = ("benchmarks/RESULTS.md",)  # documentation kept beside the code, not read at run time


def main(wheel: str) -> int:
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], capture_output=True, text=True, check=True).stdout.split()
    data = {f for f in tracked if not f.endswith(".py") and f not in NOT_PACKAGE_DATA}
    missing = sorted(data - set(zipfile.ZipFile(wheel).namelist()))
    if missing:
        print(f"{wheel} lacks {len(missing)} package data files (add globs to pyproject.toml):", *missing, sep="\n  ")
        return 1
    print(f"{wheel}: all {len(data)} package data files present")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
