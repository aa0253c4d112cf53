"""A repeated condition is logged when it starts, then with a count (issue 17.6)."""

from vla_ros.nodes.common import RepeatLog


def test_a_condition_repeated_every_message_is_logged_with_a_count():
    """detokenizer_node logged the same resync 34 times in 75 s while motion was disabled."""
    lines = []
    log = RepeatLog(lines.append, period=30.0)
    # The detokenizer's 5 Hz targets for 75 s, each one resyncing to the measured arm.
    for i in range(375):
        log('relative arm actions start from the measured arm', now=i * 0.2)
    assert len(lines) == 3   # at 0 s, 30 s, 60 s
    assert lines[0] == 'relative arm actions start from the measured arm'
    assert lines[1].endswith('(149 more times in the last 30 s)'), lines[1]
    # After a quiet spell the next occurrence is logged at once.
    log('again', now=1000.0)
    assert lines[-1].startswith('again (') and len(lines) == 4
