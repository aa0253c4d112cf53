"""A dependency-free progress line for long commands (collect, train, eval)."""

import sys
import time


class Progress:
    """``label  42/100  42%  eta 1m03s  note`` rewritten in place on stderr."""

    def __init__(self, total: int, label: str, quiet: bool = False, stream=None):
        self.total = max(1, int(total))
        self.label = label
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = time.monotonic()
        self.extra = ''
        self._last = 0.0
        self._tty = hasattr(self.stream, 'isatty') and self.stream.isatty()

    def step(self, n: int = 1):
        """Advance by ``n``."""
        self.count += n
        self._draw()

    def note(self, text: str):
        """Set the text shown after the counters."""
        self.extra = text
        self._draw()

    def _draw(self, force: bool = False):
        now = time.monotonic()
        # A terminal gets a line redrawn twice a second, a log file one line every 30 s.
        if self.quiet or (not force and now - self._last < (0.5 if self._tty else 30.0)):
            return
        self._last = now
        done = self.count / self.total
        elapsed = now - self.start
        eta = elapsed / done - elapsed if done > 0 else 0.0
        line = (f'{self.label} {self.count}/{self.total} {100 * done:3.0f}% '
                f'eta {int(eta // 60)}m{int(eta % 60):02d}s {self.extra}')
        if self._tty:
            self.stream.write('\r' + line[:150].ljust(150))
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def close(self):
        """Draw the final state and end the line."""
        self._draw(force=True)
        if not self.quiet and self._tty:
            self.stream.write('\n')
