"""
Test machinery, kept apart from the `vla-ros` verbs (``vla_ros/tools``).

- ``probe``: a node on its own thread with diagnostics and service calls that survive a
  lost answer; ``sim_probe``: the same plus sim_node's episodes (demo, closed-loop tests).
- ``lockstep``: the pipeline's processes driven on a sim clock the test owns (bring-up,
  barrier, clock, records), so every run sees the same sequence of events.
- ``golden``: golden replay of a bag: the generated input bag (``golden.bag``), the lock-step
  replay (``golden.replay``), the readable diff (``golden.diff``) and the case files and
  the `vla-ros golden` command (``golden.case``).
- ``known_model``: the known-function ONNX policy whose tokens follow from the image colour
  and the instruction (`vla-ros test-model`).
"""
