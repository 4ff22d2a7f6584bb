"""The ``pengi_kit`` entry point (see pyproject.toml). Keep torch out of this module:
``pengi-kit list-components`` imports it, and the factory below only as a string."""
from pengi_kit import hookimpl


@hookimpl
def register_components(register):
    register("audio_encoder", "template-cnn", "pengi_kit_plugin_template.encoder:ConvEncoder",
             description="A small CNN over log-mels (the plugin template's example)",
             example_args={"clip_seconds": 0.5, "n_mels": 32, "channels": 4, "num_blocks": 2, "embed_dim": 8})
