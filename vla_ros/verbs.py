"""What the `vla-ros` verbs share at their end: one-line errors and JSON results."""

import json
import sys
from typing import Callable, Optional, Tuple, Type


def guarded(verb: str, work: Callable[[], object],
            errors: Tuple[Type[BaseException], ...] = (ValueError,)) -> Optional[object]:
    """Return ``work()``; one of ``errors`` prints ``vla-ros VERB: message`` (None back)."""
    try:
        return work()
    except errors as exc:
        print(f'vla-ros {verb}: {exc}', file=sys.stderr)
        return None


def write_json(path: Optional[str], data) -> None:
    """Write ``data`` as indented JSON to ``path`` (nothing when ``path`` is empty)."""
    if path:
        with open(path, 'w', encoding='utf-8') as stream:
            json.dump(data, stream, indent=2, sort_keys=True)


def finish(verb: str, summary: Optional[dict], line: Callable[[dict], str]) -> int:
    """Exit code of a verb that returns a summary: one line and the JSON, or 2 (failed)."""
    if summary is None:
        return 2
    print(f'vla-ros {verb}: {line(summary)}')
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0
