"""Comparing found outputs with the goldens: a readable diff per frame, tick and dimension."""

from typing import Dict, List, Optional, Sequence

from .common import ARM_JOINTS, DIMENSION_NAMES, NS, TOLERANCE


def _s(ns: Optional[int]) -> str:
    return 'none' if ns is None else f'{ns / NS:.3f} s'


def _close(a, b, tol: float) -> bool:
    return abs(float(a) - float(b)) <= tol


def compare(expected: Dict, found: Dict, tolerance: float = TOLERANCE) -> List[str]:
    """
    Return one readable line per difference (empty: identical within ``tolerance``).

    Tokens are matched by the source (camera) stamp they carry, commands by their control
    tick's sim time, targets by their stamp; each line names the frame or tick, the
    dimension, the expected and the found value.
    """
    out: List[str] = []
    out += _compare_tokens(expected.get('tokens', []), found.get('tokens', []))
    out += _compare_targets(expected.get('targets', []), found.get('targets', []), tolerance)
    out += _compare_commands(expected.get('commands', []), found.get('commands', []),
                             tolerance)
    return out


def _by_key(entries: List[Dict], key: str) -> Dict:
    """Index entries by ``key``; repeated keys get (key, n) for their n-th occurrence."""
    out, seen = {}, {}
    for e in entries:
        k = e[key]
        n = seen[k] = seen.get(k, -1) + 1
        out[(k, n)] = e
    return out


def _compare_tokens(expected: List[Dict], found: List[Dict]) -> List[str]:
    out = []
    exp, got = _by_key(expected, 'stamp_ns'), _by_key(found, 'stamp_ns')
    for key in sorted(set(exp) | set(got), key=lambda k: (k[0] or 0, k[1])):
        e, f = exp.get(key), got.get(key)
        where = f'tokens for frame stamped {_s(key[0])}'
        if f is None:
            out.append(f'{where} (tick {_s(e["tick_ns"])}): missing; expected {e["tokens"]}')
            continue
        if e is None:
            out.append(f'{where} (tick {_s(f["tick_ns"])}): unexpected {f["tokens"]}')
            continue
        if e['tick_ns'] != f['tick_ns']:
            out.append(f'{where}: produced at tick {_s(f["tick_ns"])}, expected at '
                       f'{_s(e["tick_ns"])}')
        for d, (a, b) in enumerate(zip(e['tokens'], f['tokens'])):
            if a != b:
                name = DIMENSION_NAMES[d] if d < len(DIMENSION_NAMES) else str(d)
                out.append(f'{where} (tick {_s(f["tick_ns"])}): dim {d} {name}: expected '
                           f'{a}, found {b}')
        if len(e['tokens']) != len(f['tokens']):
            out.append(f'{where}: expected {len(e["tokens"])} tokens, found '
                       f'{len(f["tokens"])}')
    return out


def _compare_vectors(where: str, names: Sequence[str], expected, found,
                     tolerance: float) -> List[str]:
    if expected is None or found is None:
        if expected is None and found is None:
            return []
        return [f'{where}: expected {expected}, found {found}']
    e = [expected] if not isinstance(expected, list) else expected
    f = [found] if not isinstance(found, list) else found
    if len(e) != len(f):
        return [f'{where}: expected {len(e)} values {e}, found {len(f)} {f}']
    out = []
    for i, (a, b) in enumerate(zip(e, f)):
        if not _close(a, b, tolerance):
            out.append(f'{where} {names[i]}: expected {a:.9g}, found {b:.9g} '
                       f'(|diff| {abs(a - b):.3g} > {tolerance:g})')
    return out


def _compare_targets(expected: List[Dict], found: List[Dict], tolerance: float) -> List[str]:
    out = []
    exp, got = _by_key(expected, 'stamp_ns'), _by_key(found, 'stamp_ns')
    for key in sorted(set(exp) | set(got), key=lambda k: (k[0] or 0, k[1])):
        e, f = exp.get(key), got.get(key)
        where = f'target for frame stamped {_s(key[0])}'
        if f is None or e is None:
            out.append(f'{where}: {"missing" if f is None else "unexpected"}')
            continue
        out += _compare_vectors(where, ARM_JOINTS, e['arm'], f['arm'], tolerance)
        out += _compare_vectors(where, DIMENSION_NAMES[7:10], e['base'], f['base'],
                                tolerance)
        out += _compare_vectors(where, ['gripper'], e['gripper'], f['gripper'], tolerance)
    return out


def _compare_commands(expected: List[Dict], found: List[Dict], tolerance: float) -> List[str]:
    out = []
    exp = {e['tick_ns']: e for e in expected}
    got = {f['tick_ns']: f for f in found}
    for tick in sorted(set(exp) | set(got)):
        e, f = exp.get(tick), got.get(tick)
        where = f'command at tick {_s(tick)}'
        if f is None or e is None:
            out.append(f'{where}: {"missing" if f is None else "unexpected"} '
                       f'(arm {(e or f)["arm"]})')
            continue
        if f.get('count', 1) != e.get('count', 1):
            out.append(f'{where}: {f.get("count")} arm commands in this tick, expected '
                       f'{e.get("count")}')
        out += _compare_vectors(f'{where} arm', ARM_JOINTS, e['arm'], f['arm'], tolerance)
        out += _compare_vectors(f'{where} cmd_vel', DIMENSION_NAMES[7:10], e['base'],
                                f['base'], tolerance)
        out += _compare_vectors(f'{where} gripper', ['gripper'], e['gripper'], f['gripper'],
                                tolerance)
    return out


def report(case_name: str, differences: List[str], limit: int = 40,
           notes: Sequence[str] = ()) -> str:
    """Return a readable summary of the differences (the first ``limit`` in full)."""
    if not differences:
        return f'golden replay {case_name!r}: identical'
    kinds: Dict[str, int] = {}
    for line in differences:
        kind = line.split(' ', 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    lines = [f'golden replay {case_name!r}: {len(differences)} differences ('
             + ', '.join(f'{k} {n}' for k, n in sorted(kinds.items())) + ')']
    lines += [f'  note: {n}' for n in notes]
    lines += ['  ' + d for d in differences[:limit]]
    if len(differences) > limit:
        lines.append(f'  ... and {len(differences) - limit} more')
    return '\n'.join(lines)
