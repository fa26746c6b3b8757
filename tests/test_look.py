"""The look (avatar, aspect, quality, background, fps) shared by the CLI, server, LiveKit and Pipecat."""

from __future__ import annotations

import dataclasses

import pytest

from facecast.avatars.look import LOOK_FIELDS, Look
from facecast.avatars.presets import ASPECTS, BACKGROUNDS, QUALITIES, frame_size
from facecast.engine.config import FPS_CHOICES


def test_defaults_are_the_documented_ones() -> None:
    assert Look().to_dict() == {
        "avatar": "ava",
        "aspect": "1:1",
        "quality": "high",
        "background": "scene",
        "fps": 30,
    }
    assert Look().frame_size == (512, 512)


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("quality", QUALITIES)
def test_frame_size_follows_the_presets(aspect: str, quality: str) -> None:
    assert Look(aspect=aspect, quality=quality).frame_size == frame_size(aspect, quality)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("aspect", "16:9", "unknown aspect '16:9'; choose one of: 4:3, 3:4, 1:1"),
        ("quality", "ultra", "unknown quality 'ultra'; choose one of: low, medium, high, very_high"),
        ("background", "blue", "unknown background 'blue'; choose one of: scene, green, transparent"),
        ("fps", 60, "fps must be one of 25, 30, got 60"),
        ("fps", True, "fps must be one of 25, 30, got True"),
        ("fps", "30", "fps must be one of 25, 30, got '30'"),
        ("avatar", "", "avatar must be a non-empty avatar reference"),
        ("avatar", "  ", "avatar must be a non-empty avatar reference"),
        ("avatar", None, "avatar must be a non-empty avatar reference"),
    ],
)
def test_bad_values_name_the_field_and_the_choices(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Look(**{field: value})
    with pytest.raises(ValueError):
        Look().replace(**{field: value})  # a changed look is checked like a new one


def test_every_combination_round_trips_through_a_dict() -> None:
    for aspect in ASPECTS:
        for quality in QUALITIES:
            for background in BACKGROUNDS:
                for fps in FPS_CHOICES:
                    look = Look("leo", aspect, quality, background, fps)
                    data = look.to_dict()
                    assert list(data) == list(LOOK_FIELDS)
                    assert Look.from_dict(data) == look


def test_from_dict_fills_missing_fields_from_the_base() -> None:
    base = Look(avatar="mira", fps=25)
    assert Look.from_dict({"aspect": "4:3"}, base=base) == Look("mira", "4:3", "high", "scene", 25)
    assert Look.from_dict({}) == Look()


def test_from_dict_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown look field\\(s\\) 'aspect_ratio'; the fields are avatar"):
        Look.from_dict({"aspect_ratio": "4:3"})


def test_is_frozen_and_hashable() -> None:
    look = Look()
    with pytest.raises(dataclasses.FrozenInstanceError):
        look.fps = 25  # type: ignore[misc]
    assert {look, Look()} == {Look()}
