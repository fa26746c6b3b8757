"""The mouth track: what the engine decided for each frame, as a public, versioned record.

One record per video frame (docs/mouth-track.md): the mouth shape and where it came from, the head
and eye pose, and ARKit-style blendshape weights for rigs that take those (a 3D avatar drawn by the
client). The offline renderer writes these records as `--params` JSONL; live sessions stream them.
Pure and deterministic: a record depends only on the frame's FrameMeta.
"""

from __future__ import annotations

from typing import Any, Final

from facecast.engine.types import FaceState, FrameMeta

# Format version: within a version fields are only ever added (docs/mouth-track.md § Versioning).
MOUTH_TRACK_VERSION: Final = 1

# The ARKit face blendshapes this track drives, in a fixed order. The rest of ARKit's 52 stay 0.
BLENDSHAPE_NAMES: Final[tuple[str, ...]] = (
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthRollLower",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "tongueOut",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "browInnerUp",
    "cheekSquintLeft",
    "cheekSquintRight",
)

# How far each mouth value moves its blendshapes. ARKit's mouthClose is the lips held together over
# an open jaw, so m/b/p closures also press the lips; a spread mouth is part smile, part stretch; the
# engine's `tongue` is the tip showing behind the teeth, well short of a tongue stuck out.
SPREAD_SMILE = 0.6
SPREAD_STRETCH = 0.4
PRESS = 0.5
TEETH_LIP_RAISE = 0.3
TONGUE_OUT = 0.4
SMILE_CHEEK_SQUINT = 0.5


def _unit(value: float) -> float:
    return round(min(1.0, max(0.0, float(value))), 4)


def blendshapes(state: FaceState) -> dict[str, float]:
    """ARKit-style weights (0..1) for a face state, keyed by BLENDSHAPE_NAMES in their order."""
    m = state.mouth.clamped()
    jaw = m.open * (1.0 - m.closed)
    spread = m.width
    smile = min(1.0, SPREAD_SMILE * spread + max(0.0, state.smile))
    # Gaze: +x is the viewer's left→right, i.e. the avatar's left eye looks out and its right eye in.
    right, left = max(0.0, state.gaze_x), max(0.0, -state.gaze_x)
    down, up = max(0.0, state.gaze_y), max(0.0, -state.gaze_y)
    values = {
        "jawOpen": jaw,
        "mouthClose": m.closed * max(m.open, 0.2),
        "mouthFunnel": m.round * min(1.0, 0.3 + m.open),
        "mouthPucker": m.round * (1.0 - m.open),
        "mouthSmileLeft": smile,
        "mouthSmileRight": smile,
        "mouthStretchLeft": SPREAD_STRETCH * spread,
        "mouthStretchRight": SPREAD_STRETCH * spread,
        "mouthPressLeft": PRESS * m.closed,
        "mouthPressRight": PRESS * m.closed,
        "mouthRollLower": m.bite,
        "mouthUpperUpLeft": TEETH_LIP_RAISE * m.teeth,
        "mouthUpperUpRight": TEETH_LIP_RAISE * m.teeth,
        "mouthLowerDownLeft": TEETH_LIP_RAISE * m.teeth * jaw,
        "mouthLowerDownRight": TEETH_LIP_RAISE * m.teeth * jaw,
        "tongueOut": TONGUE_OUT * m.tongue * jaw,
        "eyeBlinkLeft": state.blink,
        "eyeBlinkRight": state.blink,
        "eyeLookUpLeft": up,
        "eyeLookUpRight": up,
        "eyeLookDownLeft": down,
        "eyeLookDownRight": down,
        "eyeLookInLeft": left,
        "eyeLookInRight": right,
        "eyeLookOutLeft": right,
        "eyeLookOutRight": left,
        "browInnerUp": state.brow,
        "cheekSquintLeft": SMILE_CHEEK_SQUINT * max(0.0, state.smile),
        "cheekSquintRight": SMILE_CHEEK_SQUINT * max(0.0, state.smile),
    }
    return {name: _unit(values[name]) for name in BLENDSHAPE_NAMES}


def mouth_track_record(meta: FrameMeta) -> dict[str, Any]:
    """One record of the mouth track (docs/mouth-track.md) for one frame."""
    state = meta.state
    record: dict[str, Any] = {"v": MOUTH_TRACK_VERSION, "t": round(meta.t, 6), "frame": meta.index}
    record.update(meta.mouth.as_dict())
    record.update(
        source=meta.mouth_source,
        speaking=bool(state.speaking),
        blink=round(float(state.blink), 4),
        head_yaw=round(float(state.head_yaw), 3),
        head_pitch=round(float(state.head_pitch), 3),
        head_roll=round(float(state.head_roll), 3),
        segment_id=meta.segment_id,
        gaze_x=round(float(state.gaze_x), 4),
        gaze_y=round(float(state.gaze_y), 4),
        brow=round(float(state.brow), 4),
        smile=round(float(state.smile), 4),
        blendshapes=blendshapes(state),
    )
    return record
