"""pengi-kit-timm: audio encoders from timm backbones over log-mel spectrograms.

Components (see :mod:`pengi_kit_timm.encoders`): ``timm-ast`` and ``timm-efficientnet``.
"""
__version__ = "0.1.0"
