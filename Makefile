# vla_ros developer entry points. `make test` and `make demo` set everything up from scratch.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-stamp
INSTALLED := $(VENV)/.install-stamp
MODEL_DIR := models/rt1_nano
MODEL := $(MODEL_DIR)/policy.onnx
# The shipped trained weights and their recipe (dataset, training, evaluation) are
# committed; `make` exports them to ONNX (docs/model-card.md: how to regenerate them).
# nano_150 (the nano network at 150x150), trained to predict 4 steps per frame and exported
# with the first step only (--keep-steps 1): a single-step model for every node.
MODEL_CONFIG := nano_150
WEIGHTS := $(MODEL_DIR)/policy.safetensors
TRAINING_INFO := $(MODEL_DIR)/training.json
SOURCES := $(shell find vla_ros launch config -type f -not -path '*/__pycache__/*' 2>/dev/null) \
	setup.py setup.cfg package.xml
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)
export MUJOCO_GL ?= egl
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all setup interfaces models install ros2-tools sdf-tools test lint demo bench policy clean

all: test

# (Re)create the venv when it is missing, is not Python 3.11, or the pins changed.
$(STAMP): requirements.txt requirements-dev.txt
	@if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

setup: $(STAMP)

# The message package (interfaces/vla_ros_interfaces), built with the generator wheels and
# installed into the venv prefix; seconds (interfaces/build.sh says why it is a script).
INTERFACES := $(VENV)/.interfaces-stamp
$(INTERFACES): $(STAMP) interfaces/build.sh $(shell find interfaces/vla_ros_interfaces -type f)
	bash interfaces/build.sh $(VENV)
	touch $@

interfaces: $(INTERFACES)

# ONNX artifacts are generated from the committed weights, never committed themselves.
$(MODEL): $(STAMP) $(shell find vla_ros/model -name '*.py' 2>/dev/null) vla_ros/tools/export.py \
		config/action_space.yaml $(WEIGHTS) $(TRAINING_INFO)
	PYTHONPATH=$(CURDIR) $(PY) -m vla_ros.cli export --config $(MODEL_CONFIG) \
	  --checkpoint $(WEIGHTS) --keep-steps 1 --info $(TRAINING_INFO) \
	  --action-space config/action_space.yaml --out $(MODEL_DIR)

models: $(MODEL)

# Non-editable install so share/vla_ros/{config,launch,models} exist in the venv.
NODES_FROM_SETUP_PY := import ast; print(*[ast.literal_eval(n.value) for n in \
  ast.parse(open('setup.py').read()).body if isinstance(n, ast.Assign) and \
  getattr(n.targets[0], 'id', '') == 'NODES'][0])
$(INSTALLED): $(STAMP) $(INTERFACES) $(MODEL) $(SOURCES)
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall .
	rm -rf build *.egg-info
	@# ROS tools (`ros2 run|launch vla_ros ...`, `ros2 pkg executables`) look for a package's
	@# executables in <prefix>/lib/vla_ros, where colcon puts them (setup.cfg); pip puts
	@# console scripts in bin/. Link every node of setup.py's NODES there.
	rm -rf $(VENV)/lib/vla_ros && mkdir -p $(VENV)/lib/vla_ros
	for node in $$($(PY) -c "$(NODES_FROM_SETUP_PY)"); do \
	  test -x $(VENV)/bin/$$node && ln -s ../../bin/$$node $(VENV)/lib/vla_ros/$$node || exit 1; done
	touch $@

install: $(INSTALLED)

# The remote policy's message code (vla_ros/wire/_proto/policy_v1_pb2.py) is generated from
# its .proto and committed, so robots need no protobuf compiler (docs/remote.md); run this
# after editing the .proto (test_serve.py fails while the two differ).
.PHONY: proto
proto: $(STAMP)
	$(PY) vla_ros/tools/gen_proto.py

lint: $(STAMP)
	$(PY) -m flake8 vla_ros test launch setup.py

# The real ROS 2 launch system and command line (launch, launch_ros, `ros2 launch|run|node|
# param|lifecycle|service ...`) have no wheels: CI and development machines carry their Jazzy
# sources next to the checkout, installed into the venv here (~40 s, once: the stamp).
# Where that folder is missing, the tests that need the tools skip and say why.
ROS2_TOOLS_DIR ?= ../shared/ros2-tools
ROS2_TOOLS := $(VENV)/.ros2-tools-stamp
ifneq ($(wildcard $(ROS2_TOOLS_DIR)/install.sh),)
$(ROS2_TOOLS): $(STAMP) $(ROS2_TOOLS_DIR)/install.sh $(wildcard $(ROS2_TOOLS_DIR)/VERSIONS \
		$(ROS2_TOOLS_DIR)/vendor/*)
	bash $(ROS2_TOOLS_DIR)/install.sh $(VENV)
	touch $@
ros2-tools: $(ROS2_TOOLS)
else
ros2-tools:
	@echo 'make: no $(ROS2_TOOLS_DIR): the ros2 launch / CLI tests will skip'
endif

# Gazebo's own description checks (test/test_description.py) need Debian's `ign sdf`
# (ignition-tools + libsdformat-dev): installed here where apt-get runs as root; elsewhere
# those tests skip and say why.
sdf-tools:
	@if ! ign sdf --help >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q ignition-tools libsdformat-dev >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q ignition-tools libsdformat-dev >/dev/null 2>&1; } || \
	    echo 'make: could not install ignition-tools/libsdformat-dev; sdformat tests will skip'; \
	  else echo 'make: no root apt-get for ign sdf; sdformat tests will skip'; fi; fi

# Two worker processes (pytest-xdist), one test file each at a time: most tests wait on node
# processes and DDS, so two files at once use the cores better; each worker has its own DDS
# domain (test/conftest.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(INSTALLED) ros2-tools sdf-tools
	cd test && ../$(PY) -m pytest -q -p no:cacheprovider \
	  $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS) .

demo: $(INSTALLED)
	$(VENV)/bin/vla-ros demo $(DEMO_ARGS)

bench: $(INSTALLED)
	$(VENV)/bin/vla-ros bench pipeline
	$(VENV)/bin/vla-ros bench model

# Regenerate comparable weights from nothing (docs/model-card.md, "Regenerating the weights"):
# clean expert demonstrations in joint deltas (two shards in parallel), behaviour cloning in
# tool deltas (relabelled by FK) in two stages, one DAgger round (the stage-2 policy drives,
# the expert labels), action chunks of 4 on clean + DAgger data, a fine-tune on the
# reactive (state-only) expert's demonstrations in tool deltas and a gentler one on the same
# data, export of the first step, closed-loop evaluation on unseen seeds. About 3.5 h on 2
# CPU cores; every step resumes where it stopped (run it again after an interruption).
POLICY_RUN ?= runs/policy
POLICY_EPISODES ?= pick_block=300,place_in_bowl=250,push_block=250,drive_to_marker=100,gripper=50
DAGGER_EPISODES ?= pick_block=150,place_in_bowl=100,push_block=100
POLICY_STEPS ?= 4000 2500 2000 1500 2000 1600
POLICY_THREADS ?= 2
POLICY_EVAL_EPISODES ?= 50
step = $(word $(1),$(POLICY_STEPS))
snap = $(POLICY_RUN)/$(1)/weights_step$$(printf %06d $(call step,$(2))).safetensors
VLA := $(VENV)/bin/vla-ros
TRAIN_TOOL := $(VLA) train --model $(MODEL_CONFIG) --action-space config/action_space.yaml \
  --aux-target-weight 3 --shift 0 --batch-size 128 --snapshot-every 500 \
  --threads $(POLICY_THREADS)
CLEAN := $(POLICY_RUN)/data/clean_a $(POLICY_RUN)/data/clean_b
DAGGER := $(POLICY_RUN)/data/dagger_a $(POLICY_RUN)/data/dagger_b
REACTIVE := $(POLICY_RUN)/data/reactive_a $(POLICY_RUN)/data/reactive_b
policy: $(INSTALLED)
	$(VLA) collect --out $(POLICY_RUN)/data/clean_a --episodes $(POLICY_EPISODES) \
	  --action-space config/action_space_joint.yaml --seed-start 0 --cache 2 --quiet & \
	$(VLA) collect --out $(POLICY_RUN)/data/clean_b --episodes $(POLICY_EPISODES) \
	  --action-space config/action_space_joint.yaml --seed-start 50000 --cache 2 --quiet; wait
	$(TRAIN_TOOL) --data $(CLEAN) --out $(POLICY_RUN)/stage1 --steps $(call step,1) --warmup 250
	$(TRAIN_TOOL) --data $(CLEAN) --out $(POLICY_RUN)/stage2 --init $(call snap,stage1,1) \
	  --lr 5e-4 --warmup 100 --steps $(call step,2) --drop-idle
	$(VLA) export --config $(MODEL_CONFIG) --action-space config/action_space.yaml \
	  --checkpoint $(call snap,stage2,2) --out $(POLICY_RUN)/stage2_export
	$(VLA) collect --out $(POLICY_RUN)/data/dagger_a --episodes $(DAGGER_EPISODES) \
	  --action-space config/action_space.yaml --policy $(POLICY_RUN)/stage2_export \
	  --seed-start 20000 --cache 2 --quiet & \
	$(VLA) collect --out $(POLICY_RUN)/data/dagger_b --episodes $(DAGGER_EPISODES) \
	  --action-space config/action_space.yaml --policy $(POLICY_RUN)/stage2_export \
	  --seed-start 70000 --cache 2 --quiet; wait
	$(TRAIN_TOOL) --data $(CLEAN) --out $(POLICY_RUN)/stage3 --init $(call snap,stage2,2) \
	  --chunk 4 --lr 3e-4 --warmup 100 --steps $(call step,3) --drop-idle
	$(TRAIN_TOOL) --data $(CLEAN) $(DAGGER) --out $(POLICY_RUN)/stage4 \
	  --init $(call snap,stage3,3) --chunk 4 --lr 3e-4 --warmup 100 --steps $(call step,4) \
	  --drop-idle
	$(VLA) collect --out $(POLICY_RUN)/data/reactive_a --episodes $(POLICY_EPISODES) \
	  --action-space config/action_space.yaml --expert reactive --seed-start 0 --cache 2 \
	  --quiet & \
	$(VLA) collect --out $(POLICY_RUN)/data/reactive_b --episodes $(POLICY_EPISODES) \
	  --action-space config/action_space.yaml --expert reactive --seed-start 50000 --cache 2 \
	  --quiet; wait
	$(TRAIN_TOOL) --data $(REACTIVE) --out $(POLICY_RUN)/stage5 \
	  --init $(call snap,stage4,4) --chunk 4 --lr 3e-4 --warmup 100 --steps $(call step,5) \
	  --drop-idle
	$(TRAIN_TOOL) --data $(REACTIVE) --out $(POLICY_RUN)/stage6 \
	  --init $(call snap,stage5,5) --chunk 4 --lr 1.5e-4 --min-lr 1e-5 --warmup 50 \
	  --steps $(call step,6) --drop-idle
	$(VLA) export --config $(MODEL_CONFIG) --action-space config/action_space.yaml \
	  --checkpoint $(call snap,stage6,6) --keep-steps 1 --out $(POLICY_RUN)/export
	$(VLA) eval $(POLICY_RUN)/export --episodes $(POLICY_EVAL_EPISODES) --out $(POLICY_RUN)/eval

clean:
	rm -rf $(VENV) build *.egg-info runs
