"""Optimization profiles: --profile parsing, defaults from dynamic dims, validation against the inputs."""

from __future__ import annotations

import pytest

from dyt_deploy.errors import DytDeployError
from dyt_deploy.tensorrt.profiles import (
    InputProfile,
    ProfileError,
    default_profile,
    model_limits,
    parse_profile,
    parse_profiles,
    parse_shape,
    profiles_from_dict,
    profiles_to_dict,
    resolve_profiles,
)

VIT = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 224, 224]}]
LLAMA = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}]


def test_parse_shape() -> None:
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape(" 8X128 ") == (8, 128)
    assert parse_shape("7") == (7,)


@pytest.mark.parametrize("text", ["1x3xa", "1,3,224", "", "1x-3", "1x0x2", "1xx2"])
def test_parse_shape_rejects(text: str) -> None:
    with pytest.raises(ProfileError, match="bad shape"):
        parse_shape(text)


def test_parse_profile() -> None:
    profile = parse_profile("pixel_values=1x3x224x224:8x3x224x224:32x3x224x224")
    assert profile == InputProfile("pixel_values", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert profile.text() == "pixel_values=1x3x224x224:8x3x224x224:32x3x224x224"
    assert parse_profile(profile.text()) == profile


@pytest.mark.parametrize("text, fragment", [
    ("x=1x8:4x8", "expected NAME=min:opt:max"),
    ("1x8:4x8:8x8", "expected NAME=min:opt:max"),
    ("x=1x8:4x8:8x8:16x8", "expected NAME=min:opt:max"),
    ("x=1x8:4xq:8x8", "bad shape '4xq'"),
    ("x=8x8:4x8:16x8", "min <= opt <= max fails at dim 0"),
    ("x=1x8:4x8:2x8", "min <= opt <= max fails at dim 0"),
    ("x=1x8:4x8x1:8x8", "different ranks"),
])
def test_parse_profile_errors_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, DytDeployError)


def test_parse_profiles_refuses_duplicates() -> None:
    assert parse_profiles(None) == {}
    profiles = parse_profiles(["a=1:2:3", "b=1x4:2x4:3x4"])
    assert list(profiles) == ["a", "b"]
    with pytest.raises(ProfileError, match="given twice for input 'a'"):
        parse_profiles(["a=1:2:3", "a=1:1:1"])


def test_limits_come_from_the_config() -> None:
    assert model_limits() == {"batch": 32, "seq": 512}
    assert model_limits({"max_seq_len": 2048}, max_batch=4) == {"batch": 4, "seq": 2048}
    assert model_limits({"max_positions": 256})["seq"] == 256
    assert model_limits({"max_seq_len": 64, "max_positions": 256})["seq"] == 64  # preference order
    assert model_limits({"max_seq_len": "long", "dim": 192})["seq"] == 512  # non-int values ignored


def test_default_vision_profile() -> None:
    profile = default_profile(VIT[0], model_limits())
    assert profile == InputProfile("pixel_values", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))


def test_default_text_profile_bounded_by_the_model() -> None:
    profile = default_profile(LLAMA[0], model_limits({"max_seq_len": 64}, max_batch=4))
    assert profile == InputProfile("input_ids", (1, 1), (4, 64), (4, 64))
    assert default_profile(LLAMA[0], model_limits()) == InputProfile("input_ids", (1, 1), (8, 128), (32, 512))


def test_unknown_dim_names_have_no_default() -> None:
    assert default_profile({"name": "x", "shape": ["batch", "height"]}, model_limits()) is None
    assert default_profile({"name": "x", "shape": [None, 4]}, model_limits()) is None


def test_resolve_derives_defaults_and_skips_static_inputs() -> None:
    inputs = [*LLAMA, {"name": "mask", "shape": [1, 16]}]
    profiles = resolve_profiles(inputs, limits=model_limits({"max_positions": 128}))
    assert list(profiles) == ["input_ids"]
    assert profiles["input_ids"].max == (32, 128)


def test_resolve_prefers_given_ranges() -> None:
    given = parse_profiles(["input_ids=1x16:2x32:4x64"])
    assert resolve_profiles(LLAMA, given) == given


def test_resolve_accepts_a_static_range_for_a_static_input() -> None:
    inputs = [{"name": "mask", "shape": [1, 16]}]
    assert resolve_profiles(inputs, parse_profiles(["mask=1x16:1x16:1x16"]))["mask"].opt == (1, 16)


def test_resolve_collects_every_problem() -> None:
    inputs = [*VIT, {"name": "extra", "shape": ["batch", "height"]}]
    given = parse_profiles(["pixel_values=1x3x224:2x3x224:4x3x224", "nope=1:1:1"])
    with pytest.raises(ProfileError) as info:
        resolve_profiles(inputs, given)
    message = str(info.value)
    assert "'nope', which is not an input (inputs: pixel_values, extra)" in message
    assert "pixel_values: the input has rank 4" in message
    assert "extra: shape [batch, height] has dims with no default range" in message
    assert "--profile extra=min:opt:max" in message


def test_resolve_refuses_a_range_over_a_static_dim() -> None:
    with pytest.raises(ProfileError, match=r"dim 1 is fixed at 3 .* varies it"):
        resolve_profiles(VIT, parse_profiles(["pixel_values=1x1x224x224:1x3x224x224:1x3x224x224"]))


def test_profiles_round_trip_through_json_dicts() -> None:
    profiles = resolve_profiles(VIT)
    data = profiles_to_dict(profiles)
    assert data == {"pixel_values": {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}}
    assert profiles_from_dict(data) == profiles
