import pytest

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware.profiles import available_profiles, load_profile


def test_every_shipped_profile_loads_with_a_dict_target():
    names = available_profiles()
    assert {"x86-host", "raspberry-pi-4", "jetson-nano", "jetson-orin-nano"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.name == name and "kind" in profile.target and profile.sram_bytes > 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\n", "missing"),
        ("[1, 2]\n", "mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_profiles_are_refused(tmp_path, text, message):
    path = tmp_path / "device.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_profile(path)


def test_a_string_target_is_refused(tmp_path):
    text = (tmp_path / "ok.yaml")
    good = load_profile("x86-host").source
    text.write_text(open(good).read().replace("target: {kind: llvm, num-cores: 2, mcpu: host}", "target: llvm"))
    with pytest.raises(InputError, match="JSON-style dict"):
        load_profile(text)


def test_each_profile_says_which_memory_is_its_hard_limit(tmp_path):
    # on a Jetson or a Pi the model lives in DRAM: on-chip fit is information, not a constraint
    assert {name: load_profile(name).memory_limit for name in ("x86-host", "jetson-nano", "raspberry-pi-4")} == {
        "x86-host": "sram", "jetson-nano": "dram", "raspberry-pi-4": "dram"}
    nano = load_profile("jetson-nano")
    assert nano.memory_budget_bytes == nano.dram_bytes
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(load_profile("x86-host").source).read().replace("memory_limit: sram", "memory_limit: l3"))
    with pytest.raises(InputError, match="memory_limit must be"):
        load_profile(bad)


@pytest.mark.parametrize("value", ["0", "12.5", "true", "lots"])
def test_a_channel_multiple_that_is_no_whole_number_of_channels_is_refused(tmp_path, value):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(load_profile("x86-host").source).read().replace("channel_multiple: 16",
                                                                         f"channel_multiple: {value}"))
    with pytest.raises(InputError, match="channel_multiple must be a whole number"):
        load_profile(bad)


def test_each_profile_names_the_export_its_runtime_takes_and_an_unknown_one_is_refused(tmp_path):
    """export_format: what the report's take-away exports to (NCNN on the Pi, whose estimates mean NCNN)."""
    assert {name: load_profile(name).export_format for name in ("raspberry-pi-4", "jetson-nano", "x86-host")} == {
        "raspberry-pi-4": "ncnn", "jetson-nano": "onnx", "x86-host": "onnx"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(load_profile("x86-host").source).read().replace("export_format: onnx", "export_format: tflite"))
    with pytest.raises(InputError, match="export_format must be one of onnx, pt, ncnn, not 'tflite'"):
        load_profile(bad)


def test_the_host_profile_builds_for_this_machines_cpu():
    """Code built for another CPU may use instructions this one lacks (AVX-512 on a Zen 3: SIGILL)."""
    from tvm.target import codegen

    assert load_profile("x86-host").target["mcpu"] == codegen.llvm_get_system_cpu()
