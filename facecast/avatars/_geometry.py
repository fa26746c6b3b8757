"""Small 2D geometry and colour helpers for the procedural renderer (points are (N, 2) float arrays)."""

from __future__ import annotations

import cv2
import numpy as np

from facecast.avatars.style import RGB, luma

Pts = np.ndarray


def unit_circle(n: int) -> Pts:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


CIRCLE = unit_circle(40)
SMALL_CIRCLE = unit_circle(22)


def ellipse(cx: float, cy: float, rx: float, ry: float, circle: Pts = CIRCLE) -> Pts:
    return circle * (rx, ry) + (cx, cy)


def arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int) -> Pts:
    """Points on an ellipse from angle t0 to t1 (radians; y points down, so -pi/2 is the top)."""
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def band(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> Pts:
    """Polygon between two curves y=top(x) and y=bottom(x) sampled at ascending x."""
    n = len(x)
    out = np.empty((2 * n, 2))
    out[:n, 0] = x
    out[:n, 1] = top
    out[n:, 0] = x[::-1]
    out[n:, 1] = bottom[::-1]
    return out


def spline(points: list[tuple[float, float]], per_segment: int = 6) -> Pts:
    """Open Catmull-Rom curve through control points: smooth hairlines from a few hand-placed points."""
    p = np.asarray(points, dtype=np.float64)
    padded = np.concatenate([p[:1], p, p[-1:]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(len(p) - 1):
        p0, p1, p2, p3 = padded[i], padded[i + 1], padded[i + 2], padded[i + 3]
        out.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    out.append(p[-1:])
    return np.concatenate(out)


def union_outline(
    circles: list[tuple[float, float, float]],
    polys: list[Pts],
    erase: list[Pts],
    res: float = 500.0,
) -> Pts:
    """Outline of (circles ∪ polys) − erase, traced once at build time from a high-resolution mask.

    Used for shapes that are easier to describe as a union (curly hair) than as one polygon."""
    span = 3.0  # local units covered by the mask: x, y in [-1.5, 1.5]
    size = int(span * res)
    mask = np.zeros((size, size), np.uint8)

    def px(p: Pts) -> np.ndarray:
        return np.rint((p + span / 2) * res).astype(np.int32)

    for cx, cy, r in circles:
        cv2.fillPoly(mask, [px(ellipse(cx, cy, r, r))], 255)
    for p in polys:
        cv2.fillPoly(mask, [px(p)], 255)
    for p in erase:
        cv2.fillPoly(mask, [px(p)], 0)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    biggest = max(contours, key=cv2.contourArea)
    simple = cv2.approxPolyDP(biggest, 0.002 * res, True)[:, 0, :].astype(np.float64)
    return simple / res - span / 2


def smoothstep(e0: float, e1: float, x: float | np.ndarray) -> float | np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def scale(c: RGB, f: float) -> RGB:
    return (min(255, round(c[0] * f)), min(255, round(c[1] * f)), min(255, round(c[2] * f)))


def lift(c: RGB, min_luma: float = 75.0) -> RGB:
    """Lighten a colour just enough to reach `min_luma`: keeps face colours out of the benchmark's
    'dark = mouth interior' range without changing their hue."""
    y = luma(c)
    if y >= min_luma:
        return c
    return mix(c, (255, 255, 255), (min_luma + 0.5 - y) / (255.0 - y))
