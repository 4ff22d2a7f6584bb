"""Third-party plugins through a real entry point: listed, usable in a recipe, and isolated when broken."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from pengi_kit import plugins
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

HOOKS = '''
from pengi_kit import hookimpl


@hookimpl
def register_components(register):
    register("audio_encoder", "toy-encoder", "throwaway_plugin.encoder:ToyEncoder",
             description="a toy for the plugin test", example_args={"embed_dim": 4})
'''

ENCODER = '''
from torch import nn


class ToyEncoder(nn.Module):
    def __init__(self, embed_dim: int = 8, sample_rate: int = 16000):
        super().__init__()
        self.sample_rate, self.clip_seconds, self.embed_dim = sample_rate, 0.5, embed_dim
        self.proj = nn.Linear(16, embed_dim)

    def forward(self, waveform):
        frames = waveform[:, : waveform.shape[1] // 16 * 16].reshape(waveform.shape[0], -1, 16)
        return self.proj(frames.abs().mean(1))
'''


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    (tmp_path / "throwaway_plugin").mkdir()
    (tmp_path / "throwaway_plugin" / "__init__.py").write_text(HOOKS)
    (tmp_path / "throwaway_plugin" / "encoder.py").write_text(ENCODER)
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    dist = tmp_path / "throwaway-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[pengi_kit]\ntoy = throwaway_plugin\nbroken = broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.STRICT_ENV, raising=False)  # CI runs strict; these tests choose per test
    plugins.reset()
    return tmp_path


def test_plugin_registers_and_broken_one_is_skipped(plugin_path, capsys):
    state = plugins.state()
    spec = state.registry.get("audio_encoder", "toy-encoder")
    assert spec.plugin == "toy"
    info = {p.name: p for p in state.plugins}
    assert info["toy"].version == "0.3" and info["toy"].hooks == ["register_components"]
    assert "broken on purpose" in info["broken"].error
    assert "plugin 'broken'" in capsys.readouterr().err
    assert state.registry.get("causal_lm", "gpt2")  # the rest still works


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_path, monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    with pytest.raises(plugins.PluginError, match="broken on purpose"):
        plugins.state()


def test_plugin_component_passes_contract_and_trains_in_a_recipe(plugin_path, tmp_path):
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.testing import check_component

    check_component("audio_encoder", "toy-encoder")
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 4})
    raw["model"]["audio_encoder"] = {"name": "toy-encoder", "embed_dim": 6}
    trainer = Trainer(from_dict(raw), progress=False)
    assert trainer.model.audio_encoder.embed_dim == 6
    assert trainer.fit().is_dir()


def test_list_components_cli_shows_plugin_without_importing_torch(plugin_path):
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from pengi_kit.cli import main
        result = CliRunner().invoke(main, ["list-components", "--json"])
        assert result.exit_code == 0, result.output
        print(result.stdout)
        print("TORCH_IMPORTED" if "torch" in sys.modules else "NO_TORCH")
    """)
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}  # the fixture removed strict mode
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().endswith("NO_TORCH")
    rows = json.loads(out[: out.rindex("]") + 1])
    kinds = {(r["kind"], r["name"]) for r in rows}
    assert ("audio_encoder", "toy-encoder") in kinds
    assert {("audio_encoder", "cnn14"), ("text_encoder", "clip-text"), ("text_encoder", "roberta"),
            ("mapper", "mlp"), ("mapper", "transformer"), ("causal_lm", "gpt2")} <= kinds
