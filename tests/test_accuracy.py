"""mAP as the search measures it catches a broken design: the smoke base scores well above 0."""

from edgesearch.runners.accuracy.finetune import validate
from edgesearch.spaces.apply import apply_candidate, uniform_candidate
from edgesearch.spaces.candidate import LayerKnobs
from edgesearch.spaces.packing import bake_fake_quant

# The smoke base (search/presets.py) scores mAP50-95 ~0.12 on its 48 val canvases. 8-bit weights
# per filter change each weight by at most half a step of 1/255 of its filter's range: on this base
# they moved mAP50-95 by under 0.005 (seen); 0.015 leaves room for other seeds of the same recipe.
BASE_FLOOR, EIGHT_BIT_MARGIN, BROKEN_SHARE = 0.05, 0.015, 0.3


def _scored(smoke_inputs, knobs: LayerKnobs) -> float:
    model = apply_candidate(smoke_inputs.base_model, uniform_candidate(smoke_inputs.base_model, knobs,
                                                                       list(smoke_inputs.resolved)))
    bake_fake_quant(model)
    return validate(model, smoke_inputs.data_yaml, imgsz=64)["map50_95"]


def test_an_eight_bit_design_keeps_the_base_mAP_and_a_broken_one_loses_it(smoke_inputs):
    base = _scored(smoke_inputs, LayerKnobs())
    assert base > BASE_FLOOR, f"the smoke base should score well above 0, got {base:.3f}"
    assert abs(_scored(smoke_inputs, LayerKnobs(weight_bits=8)) - base) < EIGHT_BIT_MARGIN
    # 2 bits per tensor: three levels for a whole layer's weights
    assert _scored(smoke_inputs, LayerKnobs(weight_bits=2, granularity="tensor")) < BROKEN_SHARE * base
