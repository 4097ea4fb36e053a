"""The one inference protocol of native and Hugging Face models: generation options (seeded
without touching the global RNG), the image-input normaliser, the batching helper, the defaults."""
import numpy as np
import pytest
import torch
from PIL import Image

import polymodal
from polymodal.errors import ConfigError
from polymodal.infer.inputs import IMAGE_SUFFIXES, as_image_list, batches
from polymodal.infer.loaded import NATIVE_GENERATION, ZERO_SHOT_TEMPLATE, GenerationOptions


def test_generation_options_check_values_and_fill_defaults():
    with pytest.raises(ConfigError, match="num_beams must be a positive integer"):
        GenerationOptions(num_beams=0)
    with pytest.raises(ConfigError, match="top_p must be in"):
        GenerationOptions(top_p=1.5)
    with pytest.raises(ConfigError, match="unknown generation option.*beams"):
        GenerationOptions.of({"beams": 4})
    assert GenerationOptions().generate_kwargs() == {}  # a Hugging Face checkpoint's own config decides
    assert GenerationOptions(max_length=9).generate_kwargs(NATIVE_GENERATION) == \
        {"max_length": 9, "num_beams": 1, "do_sample": False}  # no default length next to a given one
    assert GenerationOptions(temperature=0.5, top_p=0.9).generate_kwargs(NATIVE_GENERATION) == NATIVE_GENERATION
    assert GenerationOptions.of(do_sample=True, temperature=0.5, seed=3).generate_kwargs(NATIVE_GENERATION) == \
        {"do_sample": True, "temperature": 0.5, "num_beams": 1, "max_new_tokens": 20}


def test_sampling_is_seeded_without_touching_the_global_rng():
    model = polymodal.load("captioner-tiny")
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = model.caption(image, do_sample=True, seed=7, max_new_tokens=6)  # one image, not a list
    b = model.caption([image], do_sample=True, seed=7, max_new_tokens=6)
    assert torch.equal(torch.get_rng_state(), before)
    assert a == b and len(a) == 1



def test_repetition_controls_are_checked_and_reach_generate():
    with pytest.raises(ConfigError, match="no_repeat_ngram_size must be a positive integer"):
        GenerationOptions(no_repeat_ngram_size=0)
    with pytest.raises(ConfigError, match="repetition_penalty must be > 0"):
        GenerationOptions(repetition_penalty=0)
    assert GenerationOptions(repetition_penalty=1.5, no_repeat_ngram_size=2).generate_kwargs() == \
        {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}
    torch.manual_seed(0)
    model = polymodal.load("captioner-tiny")    # random weights (seed 0): it repeats itself
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    free = model.caption([image], max_new_tokens=12)[0].split()
    once = model.caption([image], max_new_tokens=12, no_repeat_ngram_size=1)[0].split()
    assert len(set(free)) < len(free), free
    assert len(set(once)) == len(once), once

def test_inputs_batches_and_defaults():
    arr = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    assert len(as_image_list(arr)) == 3 and len(as_image_list(arr[0])) == 1
    assert len(as_image_list(Image.new("RGB", (4, 4)))) == 1 and as_image_list("a.png") == ["a.png"]
    assert [(s.start, s.stop) for s in batches(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ConfigError, match="batch_size"):
        list(batches(5, 0))
    assert {".png", ".jpg", ".webp"} <= IMAGE_SUFFIXES
    assert ZERO_SHOT_TEMPLATE.format("cat") == "a photo of a cat."
