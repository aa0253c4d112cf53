"""Case files, their goldens, checking, regenerating and `vla-ros golden` itself."""

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence

from .bag import generate_bag
from .common import (FORMAT, GoldenError, INPUT_TOPICS, NS, REPLAY_PARAMETERS,
                     shipped_model_dir, TOLERANCE)
from .diff import compare, report
from .replay import replay
from .. import known_model
from ...core.action_space import ActionSpace
from ...core.model_contract import file_sha256
from ...graph import node_params
from ...paths import default_action_space_file, default_params_file, share_file


def load_case(path: str) -> Dict:
    """Read a case file."""
    try:
        with open(path, encoding='utf-8') as stream:
            case = json.load(stream)
    except (OSError, ValueError) as exc:
        raise GoldenError(f'cannot read case {path}: {exc}') from exc
    if case.get('format') != FORMAT:
        raise GoldenError(f'{path}: format {case.get("format")!r}, expected {FORMAT}')
    return case


def _resolve(path: str, case_path: str) -> str:
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(case_path)), path))


class Prepared:
    """The files one case runs with; temporary ones are removed by ``cleanup``."""

    def __init__(self, case: Dict, case_path: str, bag: str = ''):
        """Resolve the case's model, action space, parameters and bag (writing temporaries)."""
        import yaml
        self.tmp = tempfile.mkdtemp(prefix='vla_golden_')
        space = case.get('action_space', 'shipped')
        self.action_space_file = {
            'shipped': default_action_space_file(),
            'absolute': share_file('config', 'action_space_absolute.yaml'),
        }.get(space) or _resolve(space, case_path)
        model = case.get('model', 'shipped')
        if model == 'test_model':
            self.model_dir = known_model.write(os.path.join(self.tmp, 'test_model'),
                                               ActionSpace.from_yaml(self.action_space_file))
        else:
            self.model_dir = shipped_model_dir() if model == 'shipped' else _resolve(
                model, case_path)
        policy = os.path.join(self.model_dir, 'policy.onnx')
        if not os.path.isfile(policy):
            self.cleanup()
            raise GoldenError(f'model {policy} does not exist (case model {model!r}); '
                              'the shipped model is exported by `make models`')
        params = case.get('params_file', '')
        self.params_file = _resolve(params, case_path) if params else default_params_file()
        # Every node that reads an action space gets the case's.
        with open(self.params_file, encoding='utf-8') as stream:
            data = yaml.safe_load(stream) or {}
        for name in ('inference_node', 'detokenizer_node'):
            section = data.setdefault(f'/**/{name}', {}).setdefault('ros__parameters', {})
            section['action_space_file'] = self.action_space_file
        self.params_file = os.path.join(self.tmp, 'params.yaml')
        with open(self.params_file, 'w', encoding='utf-8') as stream:
            yaml.safe_dump(data, stream)
        self.overrides: Dict[str, Dict] = {k: dict(v) for k, v in REPLAY_PARAMETERS.items()}
        for name, values in (case.get('parameters') or {}).items():
            self.overrides.setdefault(name, {}).update(values)
        self.overrides.setdefault('inference_node', {})['model_file_path'] = policy
        self.model = _model_identity(self.model_dir)

        def period(node: str, key: str, default: float) -> int:
            values = {**node_params(self.params_file, node), **self.overrides.get(node, {})}
            return int(round(NS / float(values.get(key, default))))
        self.control_period_ns = period('interpolation_node', 'control_frequency', 20.0)
        self.inference_period_ns = period('inference_node', 'inference_frequency', 5.0)
        source = bag or case.get('bag', 'generated')
        if source == 'generated':
            self.bag = os.path.join(self.tmp, 'bag')
            generate_bag(self.bag)
        else:
            self.bag = _resolve(source, case_path)
        if not os.path.exists(self.bag):
            self.cleanup()
            raise GoldenError(f'bag {self.bag} does not exist')
        self.bag_source = source

    def cleanup(self):
        """Remove the temporary folder (generated bag, test model, params)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def _model_identity(model_dir: str) -> Dict:
    out = {'policy_sha256': file_sha256(os.path.join(model_dir, 'policy.onnx'))}
    manifest = os.path.join(model_dir, 'manifest.json')
    if os.path.isfile(manifest):
        with open(manifest, encoding='utf-8') as stream:
            data = json.load(stream)
        out['weights_sha256'] = data.get('weights_sha256', '')
        out['config'] = data.get('config', '')
    return out


def run_case(case_path: str, bag: str = '', timeout: float = 60.0) -> Dict:
    """Replay one case's bag with its model and parameters; return the results."""
    case = load_case(case_path) if os.path.exists(case_path) else {'format': FORMAT}
    prepared = Prepared(case, case_path, bag)
    try:
        if prepared.inference_period_ns % prepared.control_period_ns:
            raise GoldenError('the inference period must be a whole number of control periods')
        result = replay(prepared.bag, prepared.params_file, prepared.overrides,
                        float(case.get('tail_s', 0.5)), case.get('topics', INPUT_TOPICS),
                        timeout, prepared.control_period_ns, prepared.inference_period_ns,
                        case.get('remap'))
    finally:
        prepared.cleanup()
    result['model'] = prepared.model
    result['bag_source'] = prepared.bag_source
    return result


def check_case(case_path: str, timeout: float = 60.0, tolerance: float = TOLERANCE
               ) -> Dict:
    """
    Replay a case and compare with its goldens.

    Returns ``differences`` (readable lines), ``notes`` (model or bag not the ones the
    goldens were made with), ``report`` and the run's ``result``.
    """
    case = load_case(case_path)
    if 'goldens' not in case:
        raise GoldenError(f'{case_path} has no goldens yet: run `vla-ros golden --case '
                          f'{case_path} --regenerate`')
    result = run_case(case_path, timeout=timeout)
    golden = case['goldens']
    notes = []
    if golden.get('bag', {}).get('sha256') != result['bag']['sha256']:
        notes.append('the input bag differs from the one the goldens were made from '
                     f'({golden.get("bag", {}).get("sha256", "?")[:12]} vs '
                     f'{result["bag"]["sha256"][:12]})')
    if golden.get('model', {}).get('policy_sha256') != result['model']['policy_sha256']:
        notes.append('the model differs from the one the goldens were made with (policy.onnx '
                     f'{golden.get("model", {}).get("policy_sha256", "?")[:12]} vs '
                     f'{result["model"]["policy_sha256"][:12]})')
    differences = compare(golden, result, float(case.get('tolerance', tolerance)))
    name = case.get('name', os.path.basename(case_path))
    return {'differences': differences, 'notes': notes, 'result': result,
            'report': report(name, differences, notes=notes)}


def regenerate(case_path: str, bag: str = '', runs: int = 2, timeout: float = 60.0,
               name: str = '', model: str = '', action_space: str = '',
               remap: Optional[Dict[str, str]] = None, params_file: str = '',
               parameters: Optional[Dict[str, Dict]] = None) -> Dict:
    """
    Replay ``runs`` times; when every run agrees exactly, write the goldens into the case.

    A missing case file is created; ``bag``, ``model``, ``action_space``, ``remap``,
    ``params_file`` (stored relative to the case) fill it in or replace what it says, and
    ``parameters`` ({node: {name: value}}) are added to its per-node overrides.
    """
    if os.path.exists(case_path):
        case = load_case(case_path)
    else:
        case = {'format': FORMAT, 'name': name or os.path.splitext(
            os.path.basename(case_path))[0], 'bag': 'generated', 'model': 'shipped',
            'action_space': 'shipped', 'parameters': {}, 'tail_s': 0.5}
    if bag:
        case['bag'] = os.path.relpath(os.path.abspath(bag), os.path.dirname(
            os.path.abspath(case_path)))
    if model:
        case['model'] = model
    if action_space:
        case['action_space'] = action_space
    if remap:
        case['remap'] = dict(remap)
    for node, values in (parameters or {}).items():
        case.setdefault('parameters', {}).setdefault(node, {}).update(values)
    if params_file:
        case['params_file'] = os.path.relpath(os.path.abspath(params_file), os.path.dirname(
            os.path.abspath(case_path)))
    case.pop('goldens', None)
    os.makedirs(os.path.dirname(os.path.abspath(case_path)) or '.', exist_ok=True)
    tmp_case = case_path + '.tmp'
    with open(tmp_case, 'w', encoding='utf-8') as stream:
        json.dump(case, stream)
    try:
        results = [run_case(tmp_case, timeout=timeout) for _ in range(runs)]
    finally:
        os.remove(tmp_case)
    for i, other in enumerate(results[1:], start=2):
        diff = compare(results[0], other, tolerance=0.0)
        if diff:
            raise GoldenError(report(f'{case["name"]} run 1 vs run {i}', diff) +
                              '\nthe replay did not repeat exactly: goldens not written '
                              '(look for an input whose order of arrival decides the '
                              'result; docs/bags.md, "Note on rt1_nano.json")')
    first = results[0]
    if not first['tokens'] or not first['commands']:
        lag = first['bag'].get('camera_lag_s')
        hint = '' if lag is None or abs(lag) < 1.0 else (
            f'; camera frames are stamped {lag:.3f} s before their bag time (median): the '
            'replay clock is the bag time, so stamps and bag times must share a clock '
            '(record a simulation with `vla-ros record --use-sim-time`, or `ros2 bag record '
            '--use-sim-time`)')
        raise GoldenError(f'the replay produced {len(first["tokens"])} token messages and '
                          f'{len(first["commands"])} commands: nothing to compare against'
                          + hint)
    case['goldens'] = {
        'model': first['model'], 'bag': first['bag'], 'created_by':
        f'vla-ros golden --case {os.path.relpath(case_path)} --regenerate',
        'runs_agreeing': runs, 'tokens': first['tokens'], 'targets': first['targets'],
        'commands': first['commands']}
    with open(case_path, 'w', encoding='utf-8') as stream:
        stream.write(dumps(case))
    return case


def dumps(case: Dict) -> str:
    """Return a case as JSON text with one golden entry per line (readable git diffs)."""
    def one(value) -> str:
        return json.dumps(value, separators=(', ', ': '))
    lines = ['{']
    items = list(case.items())
    for i, (key, value) in enumerate(items):
        comma = ',' if i < len(items) - 1 else ''
        if key != 'goldens':
            lines.append(f' {one(key)}: {one(value)}{comma}')
            continue
        lines.append(f' {one(key)}: {{')
        parts = list(value.items())
        for j, (name, entries) in enumerate(parts):
            comma2 = ',' if j < len(parts) - 1 else ''
            if not isinstance(entries, list):
                lines.append(f'  {one(name)}: {one(entries)}{comma2}')
                continue
            lines.append(f'  {one(name)}: [')
            lines += [f'   {one(e)}' + (',' if n < len(entries) - 1 else '')
                      for n, e in enumerate(entries)]
            lines.append(f'  ]{comma2}')
        lines.append(f' }}{comma}')
    lines.append('}')
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] = None) -> int:
    """Command line of ``vla-ros golden``."""
    parser = argparse.ArgumentParser(
        prog='vla-ros golden',
        description='Golden replay of a rosbag2 bag through the four node processes.')
    parser.add_argument('--case', help='case file (JSON); created by --regenerate')
    parser.add_argument('--regenerate', action='store_true',
                        help='replay (twice) and write the goldens into the case')
    parser.add_argument('--bag', default='', help='with --regenerate: the bag to replay '
                        '(stored relative to the case file); default: the generated bag')
    parser.add_argument('--model', default='', help="with --regenerate: 'shipped', "
                        "'test_model' or a model folder")
    parser.add_argument('--action-space', default='', help="with --regenerate: 'shipped', "
                        "'absolute' or a YAML file")
    parser.add_argument('--remap', nargs='+', default=[], metavar='FROM:=TO',
                        help='with --regenerate: rename bag topics, e.g. '
                        '/head_camera/color/image_raw:=camera/image_raw')
    parser.add_argument('--params-file', default='', help='with --regenerate: parameters file '
                        'of the nodes (default: the shipped config/vla_ros.yaml)')
    parser.add_argument('--param', nargs='+', default=[], metavar='NODE.NAME=VALUE',
                        help='with --regenerate: a parameter override stored in the case, '
                        'e.g. interpolation_node.interpolation=min_jerk (value read as YAML)')
    parser.add_argument('--runs', type=int, default=2, help='runs that must agree before '
                        'goldens are written (default 2)')
    parser.add_argument('--write-bag', default='', metavar='FOLDER',
                        help='write the generated input bag to FOLDER and exit')
    parser.add_argument('--timeout', type=float, default=60.0,
                        help='seconds any single step may take')
    args = parser.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ['RMW_FASTRTPS_PUBLICATION_MODE'] = 'SYNCHRONOUS'  # see testing/lockstep/
    try:
        if args.write_bag:
            counts = generate_bag(args.write_bag)
            print(f'wrote {args.write_bag}: {json.dumps(counts, sort_keys=True)}')
            return 0
        if not args.case:
            parser.error('--case is required (or --write-bag)')
        if args.regenerate:
            remap = {}
            for rule in args.remap:
                if ':=' not in rule:
                    parser.error(f'--remap takes FROM:=TO, found {rule!r}')
                src, dst = rule.split(':=', 1)
                remap[src] = dst
            parameters: Dict[str, Dict] = {}
            for rule in args.param:
                key, sep, value = rule.partition('=')
                node, dot, name = key.partition('.')
                if not (sep and dot and node and name):
                    parser.error(f'--param takes NODE.NAME=VALUE, found {rule!r}')
                import yaml
                parameters.setdefault(node, {})[name] = yaml.safe_load(value)
            case = regenerate(args.case, args.bag, args.runs, args.timeout,
                              model=args.model, action_space=args.action_space, remap=remap,
                              params_file=args.params_file, parameters=parameters)
            g = case['goldens']
            print(f'wrote {args.case}: {len(g["tokens"])} token frames, {len(g["targets"])} '
                  f'targets, {len(g["commands"])} control ticks; {args.runs} runs agreed')
            return 0
        outcome = check_case(args.case, args.timeout)
    except GoldenError as exc:
        print(f'vla-ros golden: {exc}', file=sys.stderr)
        return 2
    print(outcome['report'])
    return 1 if outcome['differences'] else 0


if __name__ == '__main__':
    sys.exit(main())
