"""unbottleneck.settings: one place for the kernels' knobs, changed by context manager."""

from __future__ import annotations

import pytest

from unbottleneck import IAT, settings
from unbottleneck.settings import Settings


def test_override_applies_inside_and_restores_on_exit_even_after_an_error():
    default = settings.get()
    with settings.override(iat_auto_fast_min_size=1) as active:
        assert settings.get() is active and active.iat_auto_fast_min_size == 1
        assert IAT(16).use_fast  # d * M = 1024: below the default crossover
    assert settings.get() == default and not IAT(16).use_fast
    with pytest.raises(RuntimeError), settings.override(iat_chunk_elements=8):
        raise RuntimeError("inside")
    assert settings.get() == default


def test_set_settings_returns_the_previous_values():
    previous = settings.set_settings(alstm_cache_buffers=False)
    try:
        assert settings.get().alstm_cache_buffers is False and previous.alstm_cache_buffers is True
    finally:
        settings.set_settings(alstm_cache_buffers=previous.alstm_cache_buffers)
    assert settings.get() == Settings()


@pytest.mark.parametrize("changes,exc,match", [
    ({"iat_chunk": 5}, ValueError, "unknown setting.*iat_chunk_elements"),
    ({"iat_chunk_elements": 5.0}, TypeError, "must be of type int"),
    ({"alstm_use_onednn": 1}, TypeError, "must be of type bool"),
    ({"iat_band_max_slots": 0}, ValueError, ">= 1"),
])
def test_bad_settings_are_refused(changes, exc, match):
    with pytest.raises(exc, match=match), settings.override(**changes):
        pass
    assert settings.get() == Settings()


def test_band_slot_limit_is_read_when_a_layer_is_built():
    with settings.override(iat_band_max_slots=2):
        narrow = IAT(16, basis="piecewise_linear", implementation="fast")  # R = 64 // 15 = 4 > 2
    assert narrow.kernel == "generic"
    assert IAT(16, basis="piecewise_linear", implementation="fast").kernel == "band"


def test_chunks_follow_the_device():
    """CPU chunks fit a cache; off the CPU the accelerator budget applies (the whole batch
    at common sizes), so chunking does not multiply kernel launches there."""
    from unbottleneck.iat.kernels.common import _chunk

    assert _chunk(1024, 512, 40 * 512) == 40  # an explicit CPU budget
    assert _chunk(1024, 512) == Settings().iat_chunk_elements // 512
    assert _chunk(1024, 512, 40 * 512, device_type="cuda") == 1024
    with settings.override(iat_accelerator_chunk_elements=100 * 512):
        assert _chunk(1024, 512, device_type="cuda") == 100
