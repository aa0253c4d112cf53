"""
Instruction templates: synonyms for training, paraphrases and combinations kept aside.

Every task has training templates (``TRAIN``) and paraphrases that training never sees
(``HELD_OUT``). Placeholders: ``{colour}``, ``{side}`` (left/right), ``{action}``
(open/close) and ``{state}`` (open/closed), filled from the episode's parameters.
``HELD_OUT_COMBINATIONS`` are (task, colour) pairs that are never collected for training,
so evaluating them measures whether the policy composes a colour with a task it learned
with other colours.

Users evaluate their own phrasings with ``vla-ros eval --instructions FILE`` (YAML or JSON,
``{task: [template, ...]}``, same placeholders).
"""

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

TRAIN: Dict[str, List[str]] = {
    'pick_block': ['pick up the {colour} block', 'lift the {colour} block',
                   'grab the {colour} cube', 'pick the {colour} cube up',
                   'lift up the {colour} cube', 'grab the {colour} block'],
    'place_in_bowl': ['put the {colour} block in the bowl',
                      'drop the {colour} cube into the bowl',
                      'place the {colour} block in the bowl',
                      'put the {colour} cube into the bowl',
                      'drop the {colour} block in the bowl'],
    'push_block': ['push the {colour} block to the {side}',
                   'slide the {colour} cube to the {side}',
                   'push the {colour} cube to the {side}',
                   'nudge the {colour} block to the {side}'],
    'drive_to_marker': ['drive to the {colour} marker', 'go to the {colour} marker',
                        'move to the {colour} marker', 'drive over to the {colour} spot',
                        'go to the {colour} spot'],
    'gripper': ['{action} the gripper', '{action} the hand', '{action} your gripper'],
}

HELD_OUT: Dict[str, List[str]] = {
    'pick_block': ['raise the {colour} block off the table', 'take the {colour} cube'],
    'place_in_bowl': ['move the {colour} block into the bowl',
                      'the {colour} cube goes into the bowl'],
    'push_block': ['shove the {colour} block towards the {side}',
                   'slide the {colour} block over to the {side}'],
    'drive_to_marker': ['head to the {colour} marker', 'navigate to the {colour} spot'],
    'gripper': ['make the gripper {state}', 'set the gripper {state}'],
}

HELD_OUT_COMBINATIONS: Tuple[Tuple[str, str], ...] = (
    ('push_block', 'green'), ('place_in_bowl', 'blue'))

# Synonyms of the gripper's verb used with the training templates.
ACTION_WORDS = {'open': ('open', 'release'), 'close': ('close', 'shut')}


def slots(task: str, params: Dict) -> Dict[str, str]:
    """Return the placeholder values of one episode."""
    out = {}
    if 'colour' in params:
        out['colour'] = params['colour']
    if 'direction' in params:
        out['side'] = params['direction']
    if task == 'gripper':
        out['action'] = 'close' if params['close'] else 'open'
        out['state'] = 'closed' if params['close'] else 'open'
    return out


def fill(template: str, values: Dict[str, str]) -> str:
    """Fill a template; a placeholder the episode lacks is a clear error."""
    try:
        return template.format(**values)
    except KeyError as exc:
        raise ValueError(f'template {template!r} uses {exc}, the episode has '
                         f'{sorted(values)}') from None


def training_phrasings(task: str, params: Dict,
                       templates: Optional[Sequence[str]] = None) -> List[str]:
    """Every training phrasing of an episode (synonyms of the verb included)."""
    values = slots(task, params)
    out = []
    for template in TRAIN[task] if templates is None else templates:
        if task == 'gripper' and '{action}' in template:
            for word in ACTION_WORDS[values['action']]:
                out.append(fill(template, dict(values, action=word)))
        else:
            out.append(fill(template, values))
    return sorted(set(out))


def all_training_phrasings(tasks: Sequence[str], colours: Dict[str, Sequence[str]]
                           ) -> List[str]:
    """Every phrasing training can produce (to pre-compute their text embeddings)."""
    out = set()
    for task in tasks:
        for params in param_grid(task, colours):
            out.update(training_phrasings(task, params))
    return sorted(out)


def param_grid(task: str, colours: Dict[str, Sequence[str]]) -> List[Dict]:
    """Return every episode parameter set of ``task`` that names an instruction."""
    if task == 'gripper':
        return [{'close': True}, {'close': False}]
    grid = []
    for colour in colours[task]:
        if task == 'push_block':
            grid += [{'colour': colour, 'direction': side} for side in ('left', 'right')]
        else:
            grid.append({'colour': colour})
    return grid


def is_held_out(task: str, params: Dict) -> bool:
    """Tell whether an episode's (task, colour) is kept out of training."""
    return (task, params.get('colour')) in HELD_OUT_COMBINATIONS


def load_templates(path: str) -> Dict[str, List[str]]:
    """Read user templates ``{task: [template, ...]}`` from YAML or JSON."""
    if not os.path.isfile(path):
        raise ValueError(f'instructions file {path!r} does not exist')
    with open(path, encoding='utf-8') as stream:
        text = stream.read()
    if path.endswith('.json'):
        data = json.loads(text)
    else:
        import yaml
        data = yaml.safe_load(text)
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and v and all(isinstance(t, str) for t in v)
            for v in data.values()):
        raise ValueError(f'{path}: expected a mapping task -> non-empty list of templates')
    return {str(k): list(v) for k, v in data.items()}
