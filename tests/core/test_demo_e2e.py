"""End to end: the offline demo pretrains its tagger, trains a small Pengi and learns."""
import re

from click.testing import CliRunner

from pengi_kit.cli import main


def test_demo_trains_a_model_that_learned(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, [
        "demo", "-s", f"train.output_dir='{out}'", "-s", f"model.audio_encoder.pretrained='{out / 'tagger.pth'}'",
        "-s", "data.synthetic_valid_size=60"])
    assert result.exit_code == 0, result.output
    accuracy = dict(re.findall(r"^\s+(caption|classification|yes/no|count)\s+([0-9.]+)$", result.output, re.M))
    # chance: 1/6 for the class, 1/2 for yes/no (and 0 for exact answers that repeat the kind)
    assert float(accuracy["classification"]) >= 0.8, result.output
    assert float(accuracy["yes/no"]) >= 0.7, result.output
    assert (out / "tagger.pth").is_file() and (out / "example.wav").is_file()
    generated = CliRunner().invoke(main, ["generate", str(out), str(out / "example.wav"),
                                          "--prompt", "this is a sound of"])
    assert generated.exit_code == 0 and generated.output.split("\t")[1].strip() in {
        "low tone", "high tone", "rising chirp", "falling chirp", "noise burst", "click train"}, generated.output
