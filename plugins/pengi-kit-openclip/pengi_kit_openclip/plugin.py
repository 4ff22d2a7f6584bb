"""The ``pengi_kit`` entry point of pengi-kit-openclip. Imports no torch, so listing stays fast."""
from pengi_kit import hookimpl


@hookimpl
def register_components(register):
    register("text_encoder", "openclip-text", "pengi_kit_openclip.text:openclip_text",
             description="CLIP text tower from open_clip (any open_clip model and pretrained tag or "
                         "checkpoint), vision tower dropped",
             example_args={"model_name": "pengi-tiny-clip", "pretrained": ""})  # a 1-layer offline model
