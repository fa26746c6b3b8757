"""Face animator: the mouth track plus idle life → one FaceState per video frame.

Everything is driven by the frame index and a seeded generator, never by wall time, so the same input
and seed give the same face. Random events (blinks, gaze shifts) are drawn when they are scheduled.
"""

from __future__ import annotations

import math

import numpy as np

from facecast.engine.types import REST_MOUTH, FaceState, MouthParams

# Blinks: intervals drawn uniformly, occasionally doubled; a blink closes fast and opens slower.
BLINK_INTERVAL_S = (2.0, 5.5)
DOUBLE_BLINK_CHANCE = 0.18
BLINK_CLOSE_S = 0.06
BLINK_HOLD_S = 0.03
BLINK_OPEN_S = 0.11
DOUBLE_BLINK_GAP_S = 0.12

# Gaze: small saccades every few seconds; while speaking the eyes return to the viewer more often.
GAZE_INTERVAL_S = (1.2, 3.8)
GAZE_RANGE = (0.35, 0.2)  # x, y
GAZE_SPEED = 0.45  # fraction of the remaining distance covered per frame (fast, saccade-like)

BREATH_PERIOD_S = 4.2
SWAY_DEG = (2.2, 1.4, 1.2)  # yaw, pitch, roll amplitudes at idle
SPEAKING_NOD_DEG = 2.0  # pitch added by speech emphasis
LISTEN_ROLL_DEG = 3.0  # attentive head tilt while listening
MOUTH_RELEASE_FRAMES = 2  # an interrupted mouth reaches rest within this many frames


class FaceAnimator:
    def __init__(self, fps: int, seed: int) -> None:
        self._fps = fps
        self._rng = np.random.default_rng(seed)
        self._frame = 0
        phases = self._rng.uniform(0, 2 * math.pi, size=6)
        self._phases = phases
        self._next_blink = self._frame_after(*BLINK_INTERVAL_S)
        self._blink_starts: list[int] = []
        self._gaze = np.zeros(2)
        self._gaze_target = np.zeros(2)
        self._next_gaze = self._frame_after(*GAZE_INTERVAL_S)
        self._speech = 0.0  # smoothed speaking amount (0..1) for pose blending
        self._listen = 0.0
        self._emphasis = 0.0
        self._last_mouth = REST_MOUTH
        self._release_from: MouthParams | None = None
        self._release_left = 0

    def _frame_after(self, lo: float, hi: float) -> int:
        return self._frame + max(1, round(self._rng.uniform(lo, hi) * self._fps))

    def step(self, mouth: MouthParams | None, *, listening: bool) -> FaceState:
        """Advance one frame. `mouth` is the tracked mouth while speech plays, None when idle."""
        t = self._frame / self._fps
        speaking = mouth is not None
        a = 1.0 - math.exp(-1.0 / (0.25 * self._fps))  # ~250 ms pose blending
        self._speech += ((1.0 if speaking else 0.0) - self._speech) * a
        self._listen += ((1.0 if listening and not speaking else 0.0) - self._listen) * a

        mouth_out = self._mouth(mouth)
        # Speech emphasis: a short-lived nod that follows jaw opening.
        target_emphasis = mouth_out.open if speaking else 0.0
        self._emphasis += (target_emphasis - self._emphasis) * 0.25

        p = self._phases
        sway = (1.0 - 0.4 * self._listen) * (1.0 + 0.3 * self._speech)
        yaw = (
            SWAY_DEG[0]
            * sway
            * (0.7 * math.sin(2 * math.pi * 0.11 * t + p[0]) + 0.3 * math.sin(2 * math.pi * 0.27 * t + p[1]))
        )
        pitch = SWAY_DEG[1] * sway * math.sin(2 * math.pi * 0.09 * t + p[2])
        pitch += SPEAKING_NOD_DEG * (self._emphasis - 0.3 * self._speech) - 1.5 * self._listen
        roll = SWAY_DEG[2] * sway * math.sin(2 * math.pi * 0.07 * t + p[3]) + LISTEN_ROLL_DEG * self._listen

        state = FaceState(
            mouth=mouth_out,
            head_yaw=yaw,
            head_pitch=pitch,
            head_roll=roll,
            gaze_x=float(self._gaze[0]),
            gaze_y=float(self._gaze[1]),
            blink=self._blink(),
            breath=math.sin(2 * math.pi * t / BREATH_PERIOD_S + p[4]),
            brow=0.15 * self._speech * self._emphasis + 0.35 * self._listen,
            smile=0.25 + 0.2 * self._listen - 0.1 * self._speech,
            speaking=speaking,
            listening=listening,
        )
        self._advance_gaze(speaking)
        self._frame += 1
        return state

    def interrupt(self) -> None:
        """Speech was cut: release the mouth to rest over MOUTH_RELEASE_FRAMES frames."""
        if self._last_mouth != REST_MOUTH:
            self._release_from = self._last_mouth
            self._release_left = MOUTH_RELEASE_FRAMES

    def _mouth(self, mouth: MouthParams | None) -> MouthParams:
        if mouth is not None:
            self._release_from = None
            self._release_left = 0
            out = mouth
        elif self._release_from is not None and self._release_left > 1:
            self._release_left -= 1
            k = self._release_left / MOUTH_RELEASE_FRAMES
            f = self._release_from
            out = MouthParams(
                open=f.open * k,
                width=f.width * k,
                round=f.round * k,
                closed=f.closed * k,
                teeth=f.teeth * k,
                tongue=f.tongue * k,
                bite=f.bite * k,
                viseme=f.viseme,
            )
        else:
            self._release_from = None
            out = REST_MOUTH
        self._last_mouth = out
        return out

    def _blink(self) -> float:
        f = self._frame
        if f >= self._next_blink:
            self._blink_starts.append(f)
            if self._rng.random() < DOUBLE_BLINK_CHANCE:
                gap = BLINK_CLOSE_S + BLINK_HOLD_S + BLINK_OPEN_S + DOUBLE_BLINK_GAP_S
                self._blink_starts.append(f + round(gap * self._fps))
            self._next_blink = self._frame_after(*BLINK_INTERVAL_S)
        total = BLINK_CLOSE_S + BLINK_HOLD_S + BLINK_OPEN_S
        value = 0.0
        keep = []
        for start in self._blink_starts:
            dt = (f - start) / self._fps
            if dt < 0:
                keep.append(start)
            elif dt <= total:
                keep.append(start)
                if dt < BLINK_CLOSE_S:
                    v = dt / BLINK_CLOSE_S
                elif dt < BLINK_CLOSE_S + BLINK_HOLD_S:
                    v = 1.0
                else:
                    v = 1.0 - (dt - BLINK_CLOSE_S - BLINK_HOLD_S) / BLINK_OPEN_S
                value = max(value, v)
        self._blink_starts = keep
        return min(1.0, max(0.0, value))

    def _advance_gaze(self, speaking: bool) -> None:
        if self._frame >= self._next_gaze:
            if speaking and self._rng.random() < 0.5:
                self._gaze_target = np.zeros(2)  # look back at the viewer
            else:
                self._gaze_target = self._rng.uniform(-1, 1, size=2) * np.array(GAZE_RANGE)
                if self._listen > 0.5:
                    self._gaze_target *= 0.3  # attentive: eyes stay on the speaker
            self._next_gaze = self._frame_after(*GAZE_INTERVAL_S)
        self._gaze += (self._gaze_target - self._gaze) * GAZE_SPEED
