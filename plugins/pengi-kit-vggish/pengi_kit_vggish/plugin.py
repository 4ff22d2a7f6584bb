"""The ``pengi_kit`` entry point of pengi-kit-vggish. Imports no torch, so listing stays fast."""
from pengi_kit import hookimpl


@hookimpl
def register_components(register):
    register("audio_encoder", "vggish", "pengi_kit_vggish.encoder:vggish",
             description="VGGish (torchvggish): its own log-mel examples of 0.96 s, one 128-d frame each; "
                         "AudioSet weights from a local .pth",
             example_args={"clip_seconds": 3.0})
