"""
Regenerate ``vla_ros/wire/_proto/policy_v1_pb2.py`` from ``policy_v1.proto`` (`make proto`).

The generated module is committed, so a robot needs only the ``protobuf`` runtime (>= the
version named in its header) and ``grpcio``, not the compiler (``grpcio-tools``, a
development dependency). ``test/test_serve.py`` regenerates it into a temporary
folder and fails when the committed copy differs from what the .proto says.
"""

import argparse
import os
import shutil
import sys
import tempfile
from typing import Sequence

PROTO = os.path.join('vla_ros', 'wire', '_proto', 'policy_v1.proto')
GENERATED = os.path.join('vla_ros', 'wire', '_proto', 'policy_v1_pb2.py')
HEADER = '# flake8: noqa\n'  # generated code: not held to the project's lint rules


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(root: str, out: str) -> str:
    """Compile ``root``/PROTO into ``out`` (same relative path); return the module's path."""
    from grpc_tools import protoc
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(['protoc', f'-I{root}', f'--python_out={tmp}',
                          os.path.join(root, PROTO)])
        if rc != 0:
            raise RuntimeError(f'protoc failed with code {rc} on {PROTO}')
        with open(os.path.join(tmp, GENERATED), encoding='utf-8') as stream:
            text = stream.read()
    path = os.path.join(out, GENERATED)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as stream:
        stream.write(HEADER + text)
    return path


def main(argv: Sequence[str] = None) -> int:
    """Regenerate the committed module in the source tree (or --out DIR)."""
    parser = argparse.ArgumentParser(prog='gen_proto', description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='', help='folder to write into (default: the tree)')
    args = parser.parse_args(argv)
    root = _root()
    with tempfile.TemporaryDirectory() as tmp:
        path = generate(root, tmp)
        dest = os.path.join(args.out or root, GENERATED)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(path, dest)
    print(f'wrote {dest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
