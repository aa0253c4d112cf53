"""
Model bytes checked at start-up against the ``manifest.json`` written beside them.

``vla-ros export`` records the sha256 of every artifact it writes (``artifacts: {name:
{sha256, bytes}}``) and the policy's ``weights_sha256``. Before a backend loads a file it
calls ``verify_file``: the file must be listed in the manifest of its directory and hash to
the recorded sha256, else ``IntegrityError`` (a ``BackendError``: the inference node's
``configure`` fails and the node stays unconfigured, the error on /diagnostics) names the
file, the expected and the found hash. Once a policy is loaded,
``check_weights`` compares its ``vla_ros.weights_sha256`` metadata with the manifest's.

Without a manifest (a model that did not come from ``vla-ros export``) the file is refused
too (``IntegrityError``): integrity by default. A hand-converted model is loaded only when
asked for explicitly: ``require_manifest=False`` (``BackendOptions``; inference_node's
parameter ``allow_unverified_model``) or, for tools outside the nodes, the environment
variable ``VLA_ROS_ALLOW_UNVERIFIED_MODEL=1``; a warning then says loudly that its bytes
are not verified, and ``unverified_files()`` lists it for diagnostics.
"""

from dataclasses import dataclass
import json
import logging
import os
import threading
from typing import Dict, List, Optional

from .base import BackendError
from ..core import model_contract as mc

MANIFEST_FILE = 'manifest.json'
ALLOW_ENV = 'VLA_ROS_ALLOW_UNVERIFIED_MODEL'

_log = logging.getLogger('vla_ros.runtime.verify')
_lock = threading.Lock()
_unverified: List[str] = []


class IntegrityError(BackendError):
    """A model file whose bytes are not the ones its manifest records."""


@dataclass(frozen=True)
class Verification:
    """What was checked for one file."""

    path: str
    sha256: str
    manifest_path: str = ''  # empty: no manifest, bytes not verified
    manifest: Optional[Dict] = None

    @property
    def verified(self) -> bool:
        """Tell whether the file's bytes matched a manifest."""
        return bool(self.manifest_path)


def require_manifest_default() -> bool:
    """Return True (refuse models without a manifest) unless ``ALLOW_ENV`` is 1/true/yes/on."""
    return os.environ.get(ALLOW_ENV, '').strip().lower() not in ('1', 'true', 'yes', 'on')


def unverified_files() -> List[str]:
    """Return the files this process loaded without a manifest to check them against."""
    with _lock:
        return list(_unverified)


def load_manifest(folder: str) -> Optional[Dict]:
    """Return the manifest in ``folder``, None when there is none; malformed → IntegrityError."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, 'r', encoding='utf-8') as stream:
            manifest = json.load(stream)
    except (OSError, ValueError) as exc:
        raise IntegrityError(f'cannot read {path}: {exc}; re-export the model with '
                             '`vla-ros export`') from exc
    artifacts = manifest.get('artifacts') if isinstance(manifest, dict) else None
    if not isinstance(artifacts, dict) or not all(
            isinstance(v, dict) and isinstance(v.get('sha256'), str) for v in artifacts.values()):
        raise IntegrityError(f'{path} has no "artifacts" map of {{file: {{sha256, bytes}}}} '
                             '(the layout `vla-ros export` writes); re-export the model')
    return manifest


def verify_file(path: str, require_manifest: Optional[bool] = None,
                sha256: Optional[str] = None) -> Verification:
    """
    Check ``path`` against the manifest in its directory before it is loaded.

    ``sha256`` may pass a hash the caller already computed. Raises IntegrityError when the
    file is not listed or its sha256 differs, and, unless ``require_manifest`` is False
    (default: True unless the environment variable ``ALLOW_ENV`` allows), when there is no
    manifest.
    """
    if require_manifest is None:
        require_manifest = require_manifest_default()
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    manifest = load_manifest(folder)
    found = sha256 or mc.file_sha256(path)
    if manifest is None:
        if require_manifest:
            raise IntegrityError(
                f'no {MANIFEST_FILE} beside {path} (sha256 {found}): its bytes cannot be '
                'verified, so it is refused. Export the model with `vla-ros export`, which '
                'writes the manifest; to load a hand-converted model anyway set '
                f"inference_node's allow_unverified_model (tools: {ALLOW_ENV}=1)")
        with _lock:
            if path not in _unverified:
                _unverified.append(path)
        _log.warning(f'vla_ros: WARNING: model bytes NOT verified: no {MANIFEST_FILE} beside '
                     f'{path} (sha256 {found}), loaded because unverified models were '
                     'explicitly allowed. Models from `vla-ros export` carry a manifest.')
        return Verification(path, found)
    entry = manifest['artifacts'].get(name)
    if entry is None:
        raise IntegrityError(
            f'{path} is not listed in {manifest_path} (it lists '
            f'{sorted(manifest["artifacts"])}), so it is not part of that export; found '
            f'sha256 {found}')
    if found != entry['sha256']:
        raise IntegrityError(
            f'{path} does not match {manifest_path}: expected sha256 {entry["sha256"]}, found '
            f'{found} ({os.path.getsize(path)} bytes, expected {entry.get("bytes", "?")}). The '
            'file is corrupted or was replaced: re-export or copy the model directory again.')
    return Verification(path, found, manifest_path, manifest)


def check_weights(verification: Verification, metadata: Dict[str, str]) -> None:
    """
    Compare a loaded model's ``vla_ros.weights_sha256`` with its manifest's.

    Only policies carry the key (text encoders do not); without a manifest there is nothing
    to compare with. Raises IntegrityError on a mismatch.
    """
    found = metadata.get(mc.META_WEIGHTS)
    expected = (verification.manifest or {}).get('weights_sha256')
    if found is None or not expected or found == expected:
        return
    raise IntegrityError(
        f'{verification.path}: metadata {mc.META_WEIGHTS} is {found}, but '
        f'{verification.manifest_path} expects weights_sha256 {expected}; the model and its '
        'manifest come from different exports: re-export the model directory')
