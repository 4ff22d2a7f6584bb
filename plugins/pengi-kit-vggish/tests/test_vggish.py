"""pengi-kit-vggish: the contract, the entry point, torchvggish's own outputs, local weights, and a
Pengi that trains on it."""
import numpy as np
import pytest
import torch
from torchvggish.torchvggish import VGG, make_layers
from torchvggish.vggish_input import waveform_to_examples

from pengi_kit.errors import WeightsError
from pengi_kit.testing import check_component, check_installed, check_trains
from pengi_kit_vggish.encoder import vggish


def test_contract():
    check_component("audio_encoder", "vggish")


def test_components_come_from_the_installed_distribution():
    check_installed("vggish", "pengi-kit-vggish", [("audio_encoder", "vggish")])


def test_frames_are_torchvggish_outputs_of_a_local_release_file(tmp_path):
    torch.manual_seed(0)
    reference = VGG(make_layers(), postprocess=False).eval()
    torch.save(reference.state_dict(), tmp_path / "vggish.pth")
    encoder = vggish(str(tmp_path / "vggish.pth")).eval()
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (48000, 20000)]
    batch = torch.zeros(2, 48000)
    batch[1, :20000] = torch.from_numpy(clips[1])
    batch[0] = torch.from_numpy(clips[0])
    with torch.no_grad():
        frames, mask = encoder(batch, torch.tensor([48000, 20000]))
        for i, clip in enumerate(clips):
            want = reference(waveform_to_examples(clip, 16000))
            assert int(mask[i].sum()) == len(want)  # 3 examples of 0.96 s, then 1
            torch.testing.assert_close(frames[i, :len(want)], want)
    assert mask.sum(1).tolist() == [3, 1]
    with pytest.raises(WeightsError, match="not a VGGish state dict"):
        torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
        vggish(str(tmp_path / "other.pth"))


def test_a_pengi_with_vggish_trains_loads_and_generates(tmp_path):
    # frozen, as it is used (its 72M weights would make Adam the test's cost); its contract trains it
    check_trains(tmp_path, audio_encoder={"name": "vggish", "clip_seconds": 1.0, "trainable": False},
                 audio_mapper={"name": "qformer", "prefix_length": 2, "num_layers": 1, "num_heads": 2})
