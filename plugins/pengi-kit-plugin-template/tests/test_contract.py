"""The checks every pengi-kit component passes, run on this plugin's encoder as installed."""
import json
import subprocess
import sys

from pengi_kit.testing import check_component, check_trains

NAME = "template-cnn"  # rename: your component's name


def test_contract():
    check_component("audio_encoder", NAME)  # built from the example_args it is registered with


def test_registered_through_the_installed_entry_point():
    out = subprocess.run([sys.executable, "-m", "pengi_kit", "list-components", "--kind", "audio_encoder", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row["plugin"] for row in json.loads(out)}
    assert rows[NAME] == "template"  # the entry point's name in pyproject.toml


def test_trains_in_a_tiny_pengi(tmp_path):
    # a few training steps with the encoder in a small offline recipe; the loss must fall
    check_trains(tmp_path / "run", audio_encoder={"name": NAME, "clip_seconds": 0.5, "channels": 4})
