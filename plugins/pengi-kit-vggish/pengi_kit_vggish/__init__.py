"""pengi-kit-vggish: VGGish (Hershey et al., 2017) from the torchvggish package, as a pengi-kit audio
encoder that gives frames (docs: README.md)."""
