"""The mouth track's record and its ARKit-style blendshapes (facecast.engine.mouth_track)."""

from __future__ import annotations

import pytest

from facecast.engine.mouth_track import BLENDSHAPE_NAMES, MOUTH_TRACK_VERSION, blendshapes, mouth_track_record
from facecast.engine.types import REST_MOUTH, FaceState, FrameMeta, MouthParams
from facecast.engine.visemes import TARGETS, VISEME_INDEX, mouth_from_row


def shape(viseme: str) -> MouthParams:
    return mouth_from_row(TARGETS[VISEME_INDEX[viseme]], viseme)


def weights(viseme: str, **state: float) -> dict[str, float]:
    return blendshapes(FaceState(mouth=shape(viseme), **state))  # type: ignore[arg-type]


def test_rest_is_all_zero_but_the_names_are_all_there() -> None:
    rest = blendshapes(FaceState(mouth=REST_MOUTH))
    assert list(rest) == list(BLENDSHAPE_NAMES)
    assert all(value == 0.0 for value in rest.values()), rest


@pytest.mark.parametrize(
    ("viseme", "strongest"),
    [("D", "jawOpen"), ("A", "mouthClose"), ("F", "mouthPucker"), ("G", "mouthRollLower")],
)
def test_each_mouth_class_moves_its_own_blendshape(viseme: str, strongest: str) -> None:
    w = weights(viseme)
    others = {"jawOpen", "mouthClose", "mouthPucker", "mouthRollLower"} - {strongest}
    assert all(w[strongest] > w[name] for name in others), (viseme, w)


def test_closures_press_the_lips_and_open_vowels_do_not() -> None:
    assert weights("A")["mouthPressLeft"] > 0.2 and weights("A")["jawOpen"] < 0.1
    assert weights("D")["mouthPressLeft"] == 0.0 and weights("D")["jawOpen"] > 0.5


def test_eyes_brows_and_smile_follow_the_face_state() -> None:
    w = weights("X", blink=1.0, gaze_x=0.5, gaze_y=-0.4, brow=0.7, smile=0.5)
    assert w["eyeBlinkLeft"] == w["eyeBlinkRight"] == 1.0
    # looking to the viewer's right: the avatar's right eye turns in, its left eye out
    assert w["eyeLookInRight"] == w["eyeLookOutLeft"] == 0.5 and w["eyeLookInLeft"] == 0.0
    assert w["eyeLookUpLeft"] == pytest.approx(0.4) and w["eyeLookDownLeft"] == 0.0
    assert w["browInnerUp"] == pytest.approx(0.7)
    assert w["mouthSmileLeft"] >= 0.5 and w["cheekSquintLeft"] > 0


def test_out_of_range_states_give_unit_weights() -> None:
    wild = FaceState(mouth=MouthParams(open=3.0, width=-2.0, round=9.0), blink=4.0, gaze_x=-7.0, smile=5.0)
    assert all(0.0 <= value <= 1.0 for value in blendshapes(wild).values())


def test_a_record_is_the_params_fields_plus_pose_and_blendshapes() -> None:
    state = FaceState(mouth=shape("C"), head_yaw=1.23456, blink=0.25, speaking=True)
    meta = FrameMeta(
        index=31,
        t=31 / 30,
        out_sample_start=0,
        mouth=state.mouth,
        state=state,
        segment_id=2,
        mouth_source="words",
    )
    record = mouth_track_record(meta)
    assert record["v"] == MOUTH_TRACK_VERSION == 1
    assert (record["frame"], record["t"], record["segment_id"]) == (31, round(31 / 30, 6), 2)
    assert record["viseme"] == "C" and record["source"] == "words" and record["speaking"] is True
    assert record["head_yaw"] == 1.235 and record["blink"] == 0.25
    assert record["blendshapes"] == blendshapes(state)
    assert mouth_track_record(meta) == record  # deterministic
