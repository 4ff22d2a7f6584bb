"""pengi-kit-openclip: CLIP text towers from open_clip as pengi-kit text encoders.

Component (see :mod:`pengi_kit_openclip.text`): ``openclip-text``.
"""
__version__ = "0.1.0"
