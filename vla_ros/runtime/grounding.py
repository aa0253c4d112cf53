"""
Instruction grounding: hand the policy the trained phrasing an operator's words mean.

A policy trained on a few templates per task reads a paraphrase it never saw through the
same frozen sentence encoder, but its decoder only learnt the trained phrasings: the
shipped policy picks 96 % of blocks asked for canonically and about half asked as "take
the red cube". Grounding runs in front of it, once per new instruction:

1. the task is the one whose trained phrasings are nearest in meaning to the instruction
   (cosine of all-MiniLM-L6-v2's sentence vectors: the masked mean of the encoder's token
   states, the encoder the policy already runs);
2. the task's slots are read literally from the words, never from the sentence vector,
   which confuses antonyms ("slide the red block over to the left" is nearest to "push the
   red block to the right"): the colour, the side (left/right), the gripper's state
   (open/opened/release, close/closed/shut);
3. the policy gets the task's trained phrasing with those slots that is nearest in meaning.

Words that only one task's phrasings use ("push", "bowl", "marker", "gripper") are evidence
too: an instruction whose nearest task is not named by any of its own words, while another
task is ("push the green block" is nearer to "lift the green block" than to any push
phrasing, which all name a side), is ambiguous and refused.

An instruction is refused (:class:`GroundingError`, with the reason) when no trained
phrasing is within ``min_similarity``, when it names no value or two values of a slot its
task needs, or a value the task does not have (a yellow block, a red marker). A refused
instruction never reaches the policy: what the robot was doing stops.
"""

from dataclasses import dataclass
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Words read literally per slot: value -> the words that name it.
SIDE_WORDS = {'left': ('left',), 'right': ('right',)}
GRIPPER_WORDS = {True: ('close', 'closed', 'shut'), False: ('open', 'opened', 'release')}
DEFAULT_MIN_SIMILARITY = 0.65
SIM_TASKS = 'sim_tasks'  # the parameter value naming the simulated tasks' templates


class GroundingError(ValueError):
    """The instruction names no task the policy was trained on (the reason says why)."""


@dataclass(frozen=True)
class Phrasing:
    """One trained phrasing: its text, task and slot values (the episode parameters)."""

    text: str
    task: str
    params: Tuple[Tuple[str, object], ...]


@dataclass(frozen=True)
class Grounded:
    """What grounding hands the policy: the trained phrasing, its task and similarity."""

    text: str
    task: str
    similarity: float


def sentence_vector(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return the L2-normalised masked mean of token states [1, L, E] (mask [1, L])."""
    weights = np.asarray(mask, np.float64).reshape(-1)[:, None]
    states = np.asarray(tokens, np.float64).reshape(weights.shape[0], -1)
    mean = (states * weights).sum(0) / max(float(weights.sum()), 1e-9)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def words(text: str) -> List[str]:
    """Return the lower-case words of ``text``."""
    return re.findall(r'[a-z]+', text.lower())


class Grounding:
    """
    Map instructions to trained phrasings (see the module docstring).

    ``phrasings`` lists every trained phrasing with its task and slot values; ``colours``
    maps each task that names a coloured object to its colours; ``encode`` is the policy's
    text encoder (text -> token states [1, L, E], mask [1, L]).
    """

    def __init__(self, phrasings: Sequence[Phrasing], colours: Dict[str, Sequence[str]],
                 encode: Callable[[str], Tuple[np.ndarray, np.ndarray]],
                 min_similarity: float = DEFAULT_MIN_SIMILARITY):
        if not phrasings:
            raise ValueError('grounding needs at least one trained phrasing')
        if not -1.0 <= min_similarity <= 1.0:
            raise ValueError(f'min_similarity {min_similarity} is not a cosine in [-1, 1]')
        self.phrasings = list(phrasings)
        self.colours = {task: tuple(c) for task, c in colours.items()}
        self.all_colours = sorted({c for cs in self.colours.values() for c in cs})
        self.encode = encode
        self.min_similarity = float(min_similarity)
        self.vectors = np.stack([self._vector(p.text) for p in self.phrasings])
        used: Dict[str, set] = {}
        for p in self.phrasings:
            used.setdefault(p.task, set()).update(words(p.text))
        # The words only one task's phrasings use.
        self.own_words = {task: sorted(mine - set().union(*(w for t, w in used.items()
                                                            if t != task)))
                          for task, mine in used.items()}

    def _vector(self, text: str) -> np.ndarray:
        return sentence_vector(*self.encode(text))

    def ground(self, text: str) -> Grounded:
        """Return the trained phrasing ``text`` means, or raise GroundingError."""
        sims = self.vectors @ self._vector(text)
        best = int(np.argmax(sims))
        task = self.phrasings[best].task
        if sims[best] < self.min_similarity:
            raise GroundingError(
                f'no trained instruction is near it (nearest {self.phrasings[best].text!r}, '
                f'similarity {sims[best]:.2f} < {self.min_similarity:.2f})')
        said = words(text)
        others = sorted(t for t, own in self.own_words.items()
                        if t != task and any(w in own for w in said))
        if others and not any(w in self.own_words[task] for w in said):
            raise GroundingError(f'its words name {others}, its meaning is nearest to {task} '
                                 f'({self.phrasings[best].text!r}): ambiguous')
        params = self._slots(task, said)
        wanted = tuple(sorted(params.items()))
        same = [i for i, p in enumerate(self.phrasings) if p.task == task and p.params == wanted]
        if not same:
            raise GroundingError(f'{task} was never trained with {dict(wanted)}')
        pick = max(same, key=lambda i: sims[i])
        return Grounded(self.phrasings[pick].text, task, float(sims[pick]))

    def _slots(self, task: str, said: List[str]) -> Dict[str, object]:
        """Read the slot values of ``task`` from the instruction's words."""
        params: Dict[str, object] = {}
        needs = {name for p in self.phrasings if p.task == task for name, _ in p.params}
        if 'colour' in needs:
            named = sorted({w for w in said if w in self.all_colours})
            if len(named) != 1:
                raise GroundingError(f'{task} needs one colour of {list(self.colours[task])}, '
                                     f'the instruction names {named or "none"}')
            if named[0] not in self.colours[task]:
                raise GroundingError(f'{task} knows the colours {list(self.colours[task])}, '
                                     f'not {named[0]!r}')
            params['colour'] = named[0]
        if 'direction' in needs:
            params['direction'] = _one(task, 'side', said, SIDE_WORDS)
        if 'close' in needs:
            params['close'] = _one(task, 'gripper state', said, GRIPPER_WORDS)
        return params


def _one(task: str, slot: str, said: List[str], table: Dict) -> object:
    """Return the one value of ``table`` whose words the instruction uses."""
    found = [value for value, names in table.items() if any(w in names for w in said)]
    if len(found) != 1:
        options = [n[0] for n in table.values()]
        raise GroundingError(f'{task} needs one {slot} of {options}, the instruction names '
                             f'{"both" if found else "none"}')
    return found[0]


def builtin(encode: Callable[[str], Tuple[np.ndarray, np.ndarray]],
            min_similarity: float = DEFAULT_MIN_SIMILARITY,
            templates: Optional[Dict[str, List[str]]] = None) -> Grounding:
    """
    Return grounding for the simulated tasks (``vla_ros.learning.instructions``).

    ``templates`` replaces the training templates per task (``{task: [template, ...]}``,
    the placeholders of ``vla-ros eval --instructions``).
    """
    from ..learning import instructions
    from ..sim.tasks import BLOCK_COLOURS, MARKER_COLOURS
    colours = {task: (MARKER_COLOURS if task == 'drive_to_marker' else BLOCK_COLOURS)
               for task in instructions.TRAIN if task != 'gripper'}
    table = templates if templates is not None else instructions.TRAIN
    phrasings = []
    for task, task_templates in table.items():
        if task not in instructions.TRAIN:
            raise ValueError(f'unknown task {task!r} (known: {sorted(instructions.TRAIN)})')
        for params in instructions.param_grid(task, colours):
            key = tuple(sorted(params.items()))
            phrasings += [Phrasing(text, task, key) for text in
                          instructions.training_phrasings(task, params, task_templates)]
    return Grounding(phrasings, colours, encode, min_similarity)


def grounding_from_parameter(value: str, encode: Callable[[str], Tuple[np.ndarray, np.ndarray]],
                             min_similarity: float = DEFAULT_MIN_SIMILARITY) -> Grounding:
    """Return the grounding ``instruction_grounding`` names: sim_tasks or a templates file."""
    if value == SIM_TASKS:
        return builtin(encode, min_similarity)
    from ..learning.instructions import load_templates
    return builtin(encode, min_similarity, load_templates(value))
