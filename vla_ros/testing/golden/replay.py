"""Replaying a bag through the four nodes in lock step and keeping what they published."""

import hashlib
from typing import Dict, Optional, Sequence

import numpy as np

from .common import GoldenError, INPUT_TOPICS, NS
from ..lockstep import Lockstep
from ...bag import topics as bag_topics
from ...bag.play import open_bag


def read_inputs(bag: str, topics: Sequence[str] = INPUT_TOPICS,
                remap: Optional[Dict[str, str]] = None) -> Dict:
    """
    Read the input messages of a bag: [(bag time ns, topic, msgtype, bytes, qos)], digest.

    ``remap`` renames bag topics first (a robot's ``/head_camera/color/image_raw`` to
    ``camera/image_raw``). The digest is a sha256 over every (topic, time, bytes)
    replayed, so a golden can tell whether it is checked against the bag it was made from.
    """
    reader = open_bag(bag)
    renamed = {bag_topics.resolve(k): bag_topics.resolve(v) for k, v in (remap or {}).items()}
    wanted = {bag_topics.resolve(t) for t in topics}
    digest = hashlib.sha256()
    messages = []
    try:

        def name(conn) -> str:
            topic = bag_topics.resolve(conn.topic)
            return renamed.get(topic, topic)
        conns = [c for c in reader.connections if name(c) in wanted]
        qos = {c.id: bag_topics.qos_from_bag(list(getattr(c.ext, 'offered_qos_profiles', [])
                                                  or [])) for c in conns}
        for conn, t, data in reader.messages(conns):
            topic = name(conn)
            messages.append((int(t), topic, conn.msgtype, bytes(data), qos[conn.id]))
    finally:
        reader.close()
    messages.sort(key=lambda m: (m[0], m[1]))
    counts: Dict[str, int] = {}
    for t, topic, msgtype, data, _ in messages:
        digest.update(f'{topic}\0{msgtype}\0{t}\0{len(data)}\0'.encode())
        digest.update(data)
        counts[topic] = counts.get(topic, 0) + 1
    if not messages:
        raise GoldenError(f'bag {bag} has none of the input topics {list(topics)}')
    return {'messages': messages, 'sha256': digest.hexdigest(), 'counts': counts,
            'camera_lag_s': _camera_lag(messages)}


def _camera_lag(messages) -> Optional[float]:
    """Return the median of (bag time - header stamp) of the camera frames, in seconds."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    lags = []
    for t, topic, msgtype, data, _ in messages:
        if topic == '/camera/image_raw' and msgtype == 'sensor_msgs/msg/Image':
            stamp = deserialize_message(data, Image).header.stamp
            lags.append((t - (stamp.sec * NS + stamp.nanosec)) / NS)
            if len(lags) >= 20:
                break
    return float(np.median(lags)) if lags else None


def replay(bag: str, params_file: str, overrides: Dict[str, Dict], tail_s: float = 0.5,
           topics: Sequence[str] = INPUT_TOPICS, timeout: float = 60.0,
           control_period_ns: int = 50_000_000, inference_period_ns: int = 200_000_000,
           remap: Optional[Dict[str, str]] = None) -> Dict:
    """
    Replay a bag's inputs through the four nodes in lock step; return what came out.

    rclpy is initialised here when it is not yet. Returns ``tokens`` (tick, source stamp,
    11 tokens), ``targets`` (arrival time, stamp, arm, base, gripper), ``commands`` (tick,
    arm, base, gripper or None), the bag's digest and the driver's round count.
    """
    import rclpy

    inputs = read_inputs(bag, topics, remap)
    owns = not rclpy.ok()
    if owns:
        rclpy.init()
    step = None
    try:
        step = Lockstep(params_file, overrides, period_ns=control_period_ns, timeout=timeout,
                        late_periods={'inference_node': inference_period_ns})
        classes = {m[2]: bag_topics.message_class(m[2]) for m in inputs['messages']}
        first = {}
        for _, topic, msgtype, _, qos in inputs['messages']:
            first.setdefault(topic, (topic, classes[msgtype], qos))
        step.start(list(first.values()))
        messages = inputs['messages']
        # Start on the tick grid just before the first message.
        step.set_clock((messages[0][0] // step.period_ns) * step.period_ns)
        step.settle(2)
        for t, topic, msgtype, data, qos in messages:
            step.advance_to(t)
            step.publish(topic, data, classes[msgtype], qos)
        step.advance_to(messages[-1][0] + int(tail_s * NS))
        step.settle(2)
        result = collect(step)
        result['rounds'] = step.rounds
    finally:
        if step is not None:
            step.close()
        if owns:
            rclpy.try_shutdown()
    result['bag'] = {'sha256': inputs['sha256'], 'counts': inputs['counts']}
    if inputs['camera_lag_s'] is not None:
        result['bag']['camera_lag_s'] = round(inputs['camera_lag_s'], 6)
    return result


def collect(step) -> Dict:
    """Turn a Lockstep's records into the golden layout (lists of plain JSON values)."""
    r = step.records
    tokens = [{'tick_ns': e['t_ns'], 'stamp_ns': e['stamp_ns'], 'tokens': e['tokens']}
              for e in r.tokens]
    targets = []
    for e in r.targets:
        targets.append({'t_ns': e['t_ns'], 'stamp_ns': e['stamp_ns'], 'arm': e['arm'],
                        'base': e['base'], 'gripper': e['gripper']})
    ticks: Dict[int, Dict] = {}
    for kind, store in (('arm', r.arm), ('base', r.base), ('gripper', r.gripper)):
        for e in store:
            entry = ticks.setdefault(e['t_ns'], {'tick_ns': e['t_ns'], 'arm': None,
                                                 'base': None, 'gripper': None, 'count': 0})
            values = [float(v) for v in e['values']]
            entry[kind] = values[0] if kind == 'gripper' and values else values
            if kind == 'arm':
                entry['count'] += 1
    commands = [ticks[t] for t in sorted(ticks)]
    return {'tokens': tokens, 'targets': targets, 'commands': commands}
