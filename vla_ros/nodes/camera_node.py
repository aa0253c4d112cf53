"""
camera_node: camera/image_raw (any supported encoding) → vla/image (rgb8 300×300).

Only the newest frame matters: the subscription keeps one and the node converts on a worker
callback, so a slow conversion never queues stale frames. Malformed frames are dropped
with a throttled warning and a counter; the node never dies on input.
"""

from dataclasses import dataclass
import time

from rclpy.node import Node
from sensor_msgs.msg import Image

from .common import (ConfigError, declare_all, Diagnostics, exit_with, LATEST_IMAGE_QOS, now_s,
                     QOS_OVERRIDABLE, run)
from ..conversions import array_to_image, image_to_rgb8, time_to_ns
from ..core.image import ImageError, Resizer
from ..core.model_contract import IMAGE_SIZE
from ..core.stats import RateMonitor, WindowStats


@dataclass(frozen=True)
class CameraParams:
    """Validated parameters of camera_node."""

    output_height: int
    output_width: int
    resize_mode: str
    expected_frequency: float

    def __post_init__(self):
        if (self.output_height, self.output_width) != IMAGE_SIZE:
            raise ConfigError(
                f'output size {self.output_width}x{self.output_height} differs from the '
                f'model contract {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]}')
        if self.resize_mode not in Resizer.MODES:
            raise ConfigError(f'resize_mode must be one of {Resizer.MODES}, found '
                              f'{self.resize_mode!r}')
        if not self.expected_frequency > 0:
            raise ConfigError(f'expected_frequency must be > 0 Hz, found '
                              f'{self.expected_frequency}')


class CameraNode(Node):
    """Normalises camera frames for the policy."""

    def __init__(self):
        super().__init__('camera_node')
        self.params = CameraParams(**declare_all(self, 'camera_node'))
        p = self.params
        self._resize = Resizer(p.output_height, p.output_width, p.resize_mode)
        self.diag = Diagnostics(self)
        self._rate = RateMonitor(p.expected_frequency)
        self._convert_ms = WindowStats(500)
        self._pub = self.create_publisher(Image, 'vla/image', LATEST_IMAGE_QOS,
                                          qos_overriding_options=QOS_OVERRIDABLE)
        # Best effort like a camera driver's sensor-data QoS, but depth 1: newest frame only.
        self.create_subscription(Image, 'camera/image_raw', self._on_image, LATEST_IMAGE_QOS,
                                 qos_overriding_options=QOS_OVERRIDABLE)
        self.create_timer(1.0, self._report)
        self.get_logger().info(
            f'publishing vla/image rgb8 {p.output_width}x{p.output_height} ({p.resize_mode})')

    def _on_image(self, msg: Image):
        t0 = time.perf_counter()
        self._rate.tick(now_s(self))
        try:
            rgb = self._resize(image_to_rgb8(msg))
        except ImageError as exc:
            n = self.diag.count('dropped_malformed')
            self.get_logger().warn(f'dropping malformed frame ({n} so far): {exc}',
                                   throttle_duration_sec=2.0)
            return
        out = array_to_image(rgb, 'rgb8', stamp=msg.header.stamp,
                             frame_id=msg.header.frame_id)
        self._pub.publish(out)
        self.diag.count('published')
        self._convert_ms.add((time.perf_counter() - t0) * 1e3)
        self.diag.set('last_stamp_ns', time_to_ns(msg.header.stamp))

    def _report(self):
        r = self._rate.summary()
        self.diag.set('input_rate_hz', r['rate_hz'])
        self.diag.set('convert_ms_p50', self._convert_ms.summary()['p50'])
        self.diag.set('convert_ms_p99', self._convert_ms.summary()['p99'])


def main(args=None):
    """Run camera_node."""
    exit_with(run(CameraNode, args))


if __name__ == '__main__':
    main()
