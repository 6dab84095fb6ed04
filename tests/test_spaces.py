import json

import pytest

from edgesearch.common.errors import InputError
from edgesearch.spaces.apply import apply_candidate, uniform_candidate, validate_candidate, weight_bytes
from edgesearch.spaces.candidate import Candidate, LayerKnobs, parse_uniform
from edgesearch.spaces.prune import prunable_groups, prunable_pairs, removed_count
from edgesearch.spaces.space import available_spaces, load_space, snapped_prune_ratios


def test_parse_uniform_reads_all_five_knobs():
    knobs = parse_uniform("bits=4,scheme=symmetric,granularity=channel,prune=0.25,kernel=keep")
    assert knobs == LayerKnobs(4, "symmetric", "channel", 0.25, "keep")


@pytest.mark.parametrize("spec", ["bits=9", "scheme=log", "prune=1.0", "kernel=7", "colour=red", "bits"])
def test_parse_uniform_refuses_bad_values(spec):
    with pytest.raises(InputError):
        parse_uniform(spec)


@pytest.mark.parametrize("knobs, fragment", [
    ({"weight_bits": 4.0}, "weight_bits must be an integer"),
    ({"weight_bits": True}, "weight_bits must be an integer"),
    ({"prune_ratio": "0.5"}, "prune_ratio must be a number"),
    ({"sparsity": None}, "sparsity must be a number"),
    ({"kernel_size": 1.0}, "kernel_size must be 'keep' or an integer"),
    ({"activation_bits": "8"}, "activation_bits must be an integer"),
])
def test_candidate_knobs_are_type_checked(knobs, fragment):
    with pytest.raises(InputError, match=fragment):
        Candidate.from_json({"layers": {"model.0.conv": knobs}})


def test_candidate_json_round_trip():
    candidate = Candidate({"model.0.conv": LayerKnobs(3, "affine", "tensor", 0.0, "keep")})
    assert Candidate.from_json(json.loads(json.dumps(candidate.to_json()))) == candidate


def test_default_space_resolves_per_layer(tiny_model):
    space = load_space("yolov8")
    resolved = space.resolve(tiny_model)
    assert "model.0.conv" in resolved and not any(name.endswith("dfl.conv") for name in resolved)
    assert resolved["model.0.conv"].choices["weight_bits"] == [8, 32]  # the stem group override
    assert resolved["model.0.conv"].choices["prune_ratio"] == [0.0]  # the stem group keeps its channels
    prunable = prunable_pairs(tiny_model)
    for name, layer in resolved.items():
        if name in prunable and name != "model.0.conv":
            assert len(layer.choices["prune_ratio"]) > 1
        elif name not in prunable:  # coupled layers have pruning fixed off, and the space says why
            assert layer.choices["prune_ratio"] == [0.0] and layer.notes
    bottleneck = resolved["model.2.m.0.cv1.conv"].choices
    assert bottleneck["kernel_size"] == ["keep", 1] and bottleneck["rank_ratio"] == [1.0, 0.5, 0.25]


def test_the_structure_space_keeps_every_layer_in_float(tiny_model):
    """yolov8-structure: widths, kernels and ranks vary; weights and activations stay fp32 everywhere."""
    resolved = load_space("yolov8-structure").resolve(tiny_model, ("fp32", "fp16", "int8"))
    assert all(layer.choices["weight_bits"] == [32] and layer.choices["activation_bits"] == [32]
               and layer.choices["sparsity"] == [0.0] for layer in resolved.values())
    bottleneck = resolved["model.2.m.0.cv1.conv"].choices
    assert 0.75 in bottleneck["prune_ratio"] and bottleneck["kernel_size"] == ["keep", 1]
    assert resolved["model.0.conv"].choices["prune_ratio"] == [0.0]


def test_pruned_widths_keep_whole_blocks_of_the_profiles_channel_multiple(tiny_model):
    """A cut is never lost to padding: each prune ratio is snapped to keep the nearest multiple of the
    kernel block (ties keep more), dropped where the block would keep every channel."""
    assert snapped_prune_ratios([0.0, 0.25, 0.5, 0.75], 64, 16) == {0.0: 0.0, 0.25: 0.25, 0.5: 0.5, 0.75: 0.75}
    assert snapped_prune_ratios([0.25, 0.5, 0.75], 32, 16) == {0.25: None, 0.5: 0.5, 0.75: 0.5}
    third = snapped_prune_ratios([0.25], 48, 16)[0.25]  # 36 kept -> 32
    assert third == pytest.approx(1 / 3) and removed_count(48, third) == 16
    plain = load_space("yolov8").resolve(tiny_model)
    blocked = load_space("yolov8").resolve(tiny_model, channel_multiple=16)
    groups = prunable_groups(tiny_model)
    for name, group in groups.items():
        if name not in blocked:
            continue
        for ratio in blocked[name].choices["prune_ratio"]:
            kept = group.channels - removed_count(group.channels, ratio)
            assert kept % 16 == 0 or ratio == 0, (name, ratio, kept)
        if blocked[name].choices["prune_ratio"] != plain[name].choices["prune_ratio"]:
            assert any("multiple of 16" in note for note in blocked[name].notes)
    # the snapped design prunes to whole blocks
    name = next(n for n in blocked if len(blocked[n].choices["prune_ratio"]) > 1)
    ratio = blocked[name].choices["prune_ratio"][-1]
    pruned = apply_candidate(tiny_model, Candidate({name: LayerKnobs(prune_ratio=ratio)}))
    assert dict(pruned.named_modules())[name].out_channels % 16 == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("knobs: {weight_bit: [4]}", "unknown knob"),
        ("knobs: {weight_bits: [1], scheme: [affine]}", "weight_bits"),
        ("knobs: {scheme: [pwlq, lattice]}", "scheme"),
        ("knobs: {sparsity: [1.0]}", "sparsity"),
        ("layers: [oops", "not valid YAML"),
        ("bogus: 1\nknobs: {}", "unknown key"),
    ],
)
def test_invalid_spaces_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_space(path)


def test_unknown_space_lists_the_available_ones():
    with pytest.raises(InputError, match="yolov8"):
        load_space("no-such-space")
    assert "yolov8" in available_spaces()


def test_candidate_validation(tiny_model):
    with pytest.raises(InputError, match="not a Conv2d"):
        validate_candidate(tiny_model, Candidate({"model.99.conv": LayerKnobs(4)}))
    coupled = next(n for n in load_space("yolov8").resolve(tiny_model) if n not in prunable_pairs(tiny_model))
    with pytest.raises(InputError, match="coupled"):
        validate_candidate(tiny_model, Candidate({coupled: LayerKnobs(prune_ratio=0.5)}))


def test_apply_leaves_the_input_model_untouched_and_shrinks_the_copy(tiny_model):
    import torch

    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    layers = list(load_space("yolov8").resolve(tiny_model))
    candidate = uniform_candidate(tiny_model, parse_uniform("bits=4,prune=0.5"), layers)
    transformed = apply_candidate(tiny_model, candidate)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    x = torch.rand(1, 3, 64, 64)
    assert transformed(x)[0].shape == tiny_model(x)[0].shape
    assert sum(p.numel() for p in transformed.parameters()) < sum(p.numel() for p in tiny_model.parameters())
    float_bytes = weight_bytes(apply_candidate(tiny_model, Candidate({})))
    assert weight_bytes(transformed) < float_bytes / 4  # 4-bit indices + pruning, vs fp32


def test_uniform_knobs_skip_structural_changes_a_layer_cannot_take(tiny_model):
    import torch

    layers = list(load_space("yolov8").resolve(tiny_model))
    candidate = uniform_candidate(tiny_model, parse_uniform("bits=4,rank=0.5,kernel=1,prune=0.25"), layers)
    knobs = candidate.layers.values()
    assert any(k.rank_ratio == 0.5 for k in knobs) and any(k.rank_ratio == 1.0 for k in knobs)
    assert all(k.kernel_size == 1 for k in knobs)  # every conv here can shrink to 1x1 (or is 1x1)
    model = apply_candidate(tiny_model, candidate).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64))[0].shape == tiny_model(torch.rand(1, 3, 64, 64))[0].shape


def test_the_knob_table_defines_every_knob_once():
    """Issue 20 item 1: LayerKnobs, the space format, `--uniform` and the sensitivity keys read one table."""
    import dataclasses

    from edgesearch.spaces import knobs
    from edgesearch.spaces.space import DEFAULT_CHOICES, KNOBS

    assert tuple(f.name for f in dataclasses.fields(LayerKnobs)) == tuple(k.name for k in knobs.KNOBS) == KNOBS
    assert dataclasses.asdict(LayerKnobs()) == knobs.DEFAULTS == {k: v[0] for k, v in DEFAULT_CHOICES.items()}
    assert set(knobs.WEIGHT_KNOBS) | set(knobs.CHANGE_KNOBS) == set(KNOBS)
    for knob in knobs.KNOBS:
        assert knob.check(knob.default) is None
        assert parse_uniform(f"{knob.alias}={knob.default}") == LayerKnobs()  # each alias reaches its knob
    # one key format, float layers normalised: the pricer's and the sensitivity pass's keys agree
    assert knobs.weight_option_key(LayerKnobs(weight_bits=32, scheme="pwlq", sparsity=0)) == "32|affine|filter|16|0.0"
    assert knobs.weight_option_key({"weight_bits": 4, "scheme": "pwlq"}) == "4|pwlq|filter|16|0.0"
