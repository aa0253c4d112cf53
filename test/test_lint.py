"""
Linters are tests.

ament's flake8 (99 columns, single quotes, import order, docstrings) and pep257
configuration, over the package, the launch files and the tests.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = [os.path.join(ROOT, p) for p in ('vla_ros', 'launch', 'test', 'setup.py')]


@pytest.mark.linter
def test_flake8():
    # In a fresh process: flake8 forks a pool of workers, and a fork of this test process
    # (threads of earlier tests: DDS, ONNX Runtime, torch) can inherit a lock held by one
    # of them and hang for ever (seen once under load, in ast.parse in the worker).
    code = ('import sys\nfrom ament_flake8.main import main_with_errors\n'
            'rc, errors = main_with_errors(argv=sys.argv[1:])\n'
            'print("\\n".join(errors))\nsys.exit(rc)\n')
    done = subprocess.run([sys.executable, '-c', code] + PATHS, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f'flake8 errors:\n{done.stdout}\n{done.stderr[-2000:]}'


@pytest.mark.linter
def test_pep257():
    from ament_pep257.main import main
    rc = main(argv=[p for p in PATHS if os.path.isdir(p)])
    assert rc == 0, 'pep257 errors: see the output above'
