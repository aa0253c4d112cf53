"""
Linters are tests.

ament's flake8 (99 columns, single quotes, import order, docstrings) and pep257
configuration, over the package, the launch files and the tests.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = [os.path.join(ROOT, p) for p in ('vla_ros', 'launch', 'test', 'setup.py')]


@pytest.mark.linter
def test_flake8():
    from ament_flake8.main import main_with_errors
    rc, errors = main_with_errors(argv=PATHS)
    assert rc == 0, f'{len(errors)} flake8 error(s):\n' + '\n'.join(errors)


@pytest.mark.linter
def test_pep257():
    from ament_pep257.main import main
    rc = main(argv=[p for p in PATHS if os.path.isdir(p)])
    assert rc == 0, 'pep257 errors: see the output above'
