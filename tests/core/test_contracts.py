"""Every registered component, built-in or from an installed plugin, passes its contract."""
import pytest

from pengi_kit.plugins import registry
from pengi_kit.testing import check_component, registered_components


@pytest.mark.parametrize("kind,name", registered_components(registry()))
def test_component_contract(kind, name):
    check_component(kind, name)


def test_builtin_zoo_is_registered():
    names = {(c[0], c[1]) for c in registered_components(registry())}
    for expected in [("audio_encoder", "cnn14"), ("audio_encoder", "htsat"), ("text_encoder", "clip-text"),
                     ("text_encoder", "roberta"), ("mapper", "mlp"), ("mapper", "transformer"), ("causal_lm", "gpt2")]:
        assert expected in names
