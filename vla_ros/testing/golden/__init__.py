"""
`vla-ros golden`: golden replay of a rosbag2 bag through the four node processes.

A *case* is a JSON file (``test/golden/*.json``) naming a bag, a model, an action space and
parameter overrides, and holding the *goldens*: the action tokens the pipeline produced for
each camera frame (matched by the source stamp they carry), the targets the detokenizer made
of them, and the controller commands of every 20 Hz tick. Checking a case replays the bag's
input topics (``camera/image_raw``, ``joint_states``, ``vla/instruction``, ``vla/estop``)
through camera_node, inference_node, detokenizer_node and interpolation_node on sim time
driven in lock step (``testing/lockstep/``), and compares: tokens exactly, targets and
commands to ``tolerance`` (1e-6). A changed model, tokenizer, action space, interpolation
rule or parameter shows up as a diff naming the frame or tick, the dimension, the expected
and the found value.

    vla-ros golden --case test/golden/rt1_nano.json             # check (exit 1 on a diff)
    vla-ros golden --case test/golden/rt1_nano.json --regenerate  # (re)write the goldens
    vla-ros golden --case test/golden/my_robot.json --bag runs/bags/run_042 --regenerate
    vla-ros golden --write-bag /tmp/golden_bag                  # the generated input bag

``--regenerate`` replays twice and writes only when both runs agree exactly, so a golden
is never taken from a run that would not repeat. The built-in cases use a bag generated
here, deterministically, on every run (``generate_bag``): two 3-second tasks with 320x240
bgr8 camera frames at 10 Hz, joint_states at 50 Hz and one instruction per task.

The shipped model reads the previous commanded target (``state`` input), so the run is a
closed loop through the nodes; it still repeats exactly because the lock step fixes the sim
time at which every message is handled. ``joint_states`` come from the bag (a replay does not
move a robot). interpolation_node runs with ``start_enabled`` (nobody calls ``vla/enable``)
and ``clock_timeout`` 10 s: between two steps ROS time stands still on purpose, which must
not be taken for a lost clock.

The parts: ``bag`` (the generated input bag), ``replay`` (reading a bag and running it
through the nodes in lock step, ``testing/lockstep/``), ``diff`` (the readable
comparison), ``case`` (case files, check, regenerate, the command); ``common`` holds the
constants they share.
"""

from .bag import frame, generate_bag, joint_positions_at, TASKS  # noqa: F401
from .case import (check_case, dumps, load_case, main, Prepared, regenerate,  # noqa: F401
                   run_case)
from .common import (FORMAT, GoldenError, INPUT_TOPICS, NS, REPLAY_PARAMETERS,  # noqa: F401
                     shipped_model_dir, TOLERANCE)
from .diff import compare, report  # noqa: F401
from .replay import collect, read_inputs, replay  # noqa: F401
