"""
The demo's report: video, plots and the summary.

The head-camera video has the instruction overlaid; the plots show commanded vs measured
arm joints and base velocity; the summary is Markdown. Matplotlib, Pillow and imageio are
imported here only.
"""

from fractions import Fraction
import os
from typing import Dict, List

import numpy as np

from ..testing.sim_probe import SimProbe


def rate(times: List[float], since: float) -> float:
    t = [x for x in times if x >= since]
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 2 and t[-1] > t[0] else 0.0


def _overlay(image: np.ndarray, instruction: str, status: Dict) -> np.ndarray:
    from PIL import Image as PILImage, ImageDraw, ImageFont
    canvas = PILImage.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    draw.rectangle((0, 0, image.shape[1], 20), fill=(0, 0, 0))
    draw.text((4, 3), instruction, fill=(255, 255, 255), font=font)
    if status:
        ok = status.get('success')
        text = f't={status.get("episode_time", 0):.1f}s' + ('  success' if ok else '')
        draw.rectangle((0, image.shape[0] - 20, image.shape[1], image.shape[0]), fill=(0, 0, 0))
        draw.text((4, image.shape[0] - 17), text, fill=(120, 255, 120) if ok else (230, 230, 230),
                  font=font)
    return np.asarray(canvas)


def write_video(frames, out_dir: str, fps: float) -> List[str]:
    """
    Write ``camera.mp4`` (H.264 through PyAV) and a ``camera.gif`` preview; return the names.

    The MP4 holds every recorded frame at full resolution; the GIF (every second frame at
    half size) is for places that show no video, such as a Markdown preview.
    """
    import av
    import imageio
    if not frames:
        return []
    images = [_overlay(img, text, status) for img, text, status in frames]
    height, width = images[0].shape[:2]
    names = []
    mp4 = os.path.join(out_dir, 'camera.mp4')
    with av.open(mp4, 'w') as container:
        stream = container.add_stream('libx264', rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = 'yuv420p'
        stream.options = {'crf': '23', 'preset': 'veryfast'}
        for image in images:
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(image[:stream.height, :stream.width]), format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    names.append('camera.mp4')
    preview = [img[::2, ::2] for img in images[::2]]
    imageio.mimsave(os.path.join(out_dir, 'camera.gif'), preview,
                    duration=2.0 / fps, loop=0)
    names.append('camera.gif')
    return names


def _finish(plt, fig, axes, out_dir: str, name: str, title: str, xlabel: str) -> str:
    """Label, save and close one figure; return its file name."""
    axes[0].legend(loc='upper right', fontsize=8)
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=90)
    plt.close(fig)
    return name


def write_plots(rec: SimProbe, out_dir: str, episodes: List[Dict]) -> List[str]:
    """Commanded vs measured arm joints and base velocity, against sim time."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    files = []
    with rec.lock:
        measured, commanded = list(rec.measured), list(rec.commanded)
        base_cmd, base_meas = list(rec.base_cmd), list(rec.base_meas)
    if measured:
        fig, axes = plt.subplots(7, 1, figsize=(11, 13), sharex=True)
        tm = np.array([t for t, _ in measured])
        qm = np.array([q for _, q in measured])
        tc = np.array([t for t, _ in commanded]) if commanded else np.zeros(0)
        qc = np.array([q for _, q in commanded]) if commanded else np.zeros((0, 7))
        for j, ax in enumerate(axes):
            ax.plot(tm, qm[:, j], lw=1.0, label='measured (joint_states)')
            if len(tc):
                ax.plot(tc, qc[:, j], lw=0.8, ls='--', label='commanded (arm_controller)')
            ax.set_ylabel(f'joint {j + 1} (rad)')
            for e in episodes:
                ax.axvline(e['start_sim_time'], color='0.7', lw=0.6)
        files.append(_finish(plt, fig, axes, out_dir, 'arm_joints.png',
                             'Arm: commanded vs measured joint positions',
                             'sim time (s); grey lines: episode starts'))
    if base_meas:
        fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
        bm = np.array(base_meas)
        bc = np.array(base_cmd) if base_cmd else np.zeros((0, 4))
        for i, (ax, name) in enumerate(zip(axes, ('vx (m/s)', 'vy (m/s)', 'wz (rad/s)'))):
            ax.plot(bm[:, 0], bm[:, i + 1], lw=1.0, label='measured (odom)')
            if len(bc):
                ax.plot(bc[:, 0], bc[:, i + 1], lw=0.8, ls='--', label='commanded (cmd_vel)')
            ax.set_ylabel(name)
        files.append(_finish(plt, fig, axes, out_dir, 'base_velocity.png',
                             'Base: commanded vs measured velocity (base frame)',
                             'sim time (s)'))
    return files


def summary_markdown(summary: Dict) -> str:
    """Human-readable report."""
    lines = ['# vla_ros closed-loop demo', '']
    lines.append(f'- when: {summary["started"]}  (wall {summary["wall_time_s"]:.0f} s)')
    lines.append(f'- actions from: {summary["action_source"]}')
    if summary['model_note']:
        lines.append(f'- **{summary["model_note"]}**')
    lines.append(f'- real-time factor (sim): requested {summary["real_time_factor_requested"]}'
                 f', achieved {summary["real_time_factor"]:.2f}')
    r = summary['rates_hz']
    lines.append(f'- rates seen by the demo (wall Hz): camera/image_raw {r["camera"]:.1f}, '
                 f'joint_states {r["joint_states"]:.1f}, vla/action_tokens '
                 f'{r["action_tokens"]:.2f}, arm_controller/commands {r["arm_commands"]:.2f}')
    f = summary['pipeline']
    if f:
        lines.append(
            '- pipeline, from the node diagnostics (sim clock, 4 ms /clock steps): inference '
            f'{f["inference_rate_hz"]} Hz, model run p50/p99 {f["model_ms_p50"]}/'
            f'{f["model_ms_p99"]} ms; control {f["control_rate_hz"]} Hz, period jitter p99 '
            f'{f["control_jitter_ms_p99"]} ms; camera stamp → first command p50/p99 '
            f'{f["latency_ms_p50"]}/{f["latency_ms_p99"]} ms')
    lines += ['', '| task | success | rate |', '|---|---|---|']
    for task, t in summary['tasks'].items():
        lines.append(f'| {task} | {t["successes"]}/{t["episodes"]} | '
                     f'{100 * t["success_rate"]:.0f} % |')
    lines += ['', '| task | seed | instruction | success | episode time (s) |',
              '|---|---|---|---|---|']
    for e in summary['episodes']:
        lines.append(f'| {e["task"]} | {e["seed"]} | {e["instruction"]} | '
                     f'{"yes" if e["success"] else "no"} | {e["episode_time"]:.1f} |')
    lines += ['', 'Files: ' + ', '.join(summary['files']), '']
    return '\n'.join(lines)


def pipeline_figures(diagnostics: Dict[str, Dict[str, str]]) -> Dict[str, str]:
    """Pick the inference/control figures out of the latest /diagnostics of the nodes."""
    inf = diagnostics.get('inference_node', {})
    ctl = diagnostics.get('interpolation_node', {})
    return {
        'inference_rate_hz': inf.get('rate_hz', 'n/a'),
        'model_ms_p50': inf.get('model_ms_p50', 'n/a'),
        'model_ms_p99': inf.get('model_ms_p99', 'n/a'),
        'control_rate_hz': ctl.get('rate_hz', 'n/a'),
        'control_jitter_ms_p99': ctl.get('jitter_ms_p99', 'n/a'),
        'latency_ms_p50': ctl.get('latency_ms_p50', 'n/a'),
        'latency_ms_p99': ctl.get('latency_ms_p99', 'n/a'),
    }
