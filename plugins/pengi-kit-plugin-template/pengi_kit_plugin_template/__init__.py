"""pengi-kit-plugin-template: a minimal pengi-kit plugin to copy (one audio encoder)."""
__version__ = "0.1.0"
