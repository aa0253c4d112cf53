"""
The simulated camera's render thread: MuJoCo snapshots in, rendered frames out.

The EGL context belongs to the thread that made it, so one thread owns the renderer and
renders snapshots (qpos, mocap positions, stamp) that the physics thread hands over; a
frame not yet rendered when the next arrives is replaced and counted, so a slow frame never
delays physics. Shadows and reflections are off (not needed by the policy, costly here).
"""

import queue
import threading
import time
from typing import Optional

import numpy as np


class CameraWorker(threading.Thread):
    """Renders snapshots of the simulation on one thread (the EGL context is per thread)."""

    def __init__(self, model, camera_id: int, size: int, publish):
        super().__init__(name='sim_camera', daemon=True)
        self._model = model
        self._camera_id = camera_id
        self._size = size
        self._publish = publish
        self._slot: 'queue.Queue' = queue.Queue(maxsize=1)
        self.dropped = 0
        self.error: Optional[str] = None
        self.render_ms = 0.0

    def submit(self, qpos: np.ndarray, mocap_pos: np.ndarray, stamp_ns: int):
        """Queue a frame; an unrendered older one is replaced (and counted as dropped)."""
        try:
            self._slot.put_nowait((qpos, mocap_pos, stamp_ns))
        except queue.Full:
            try:
                self._slot.get_nowait()
                self.dropped += 1
            except queue.Empty:
                pass
            self._slot.put_nowait((qpos, mocap_pos, stamp_ns))

    def stop(self):
        """Ask the thread to finish (it frees its GL context itself)."""
        self.submit(None, None, -1)

    def run(self):
        import mujoco
        try:
            data = mujoco.MjData(self._model)
            renderer = mujoco.Renderer(self._model, self._size, self._size)
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        except Exception as exc:  # no EGL, no GPU driver, ...
            self.error = f'cannot create the camera renderer: {exc}'
            return
        try:
            while True:
                qpos, mocap_pos, stamp_ns = self._slot.get()
                if qpos is None:
                    break
                t0 = time.perf_counter()
                data.qpos[:] = qpos
                data.mocap_pos[:] = mocap_pos
                mujoco.mj_kinematics(self._model, data)
                mujoco.mj_camlight(self._model, data)
                renderer.update_scene(data, camera=self._camera_id)
                image = renderer.render()
                self.render_ms = (time.perf_counter() - t0) * 1e3
                try:
                    self._publish(image, stamp_ns)
                except Exception as exc:  # the context went away (shutdown) or worse
                    self.error = f'camera publishing stopped: {exc}'
                    break
        finally:
            renderer.close()
