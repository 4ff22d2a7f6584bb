"""The checks every pengi-kit component passes, run on this plugin's encoder as installed."""

from pengi_kit.testing import check_component, check_installed, check_trains

NAME = "template-cnn"  # rename: your component's name


def test_contract():
    check_component("audio_encoder", NAME)  # built from the example_args it is registered with


def test_registered_through_the_installed_entry_point():
    # "template": the entry point's name in pyproject.toml; then the distribution's name
    check_installed("template", "pengi-kit-plugin-template", [("audio_encoder", NAME)])


def test_trains_in_a_tiny_pengi(tmp_path):
    # a few training steps with the encoder in a small offline recipe; the loss must fall
    check_trains(tmp_path / "run", audio_encoder={"name": NAME, "clip_seconds": 0.5, "channels": 4})
