"""The chat layout: the loss mask token by token under real templates' shapes, a model that
learns a question about two clips (and listens), and chat inference from Python and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pengi_kit.components.hf_causal_lm import DEFAULT_CHAT_TEMPLATE
from pengi_kit.data.tokenizer import _bpe_tokenizer
from pengi_kit.errors import PengiKitError, RecipeError
from pengi_kit.models.chat import AUDIO_SLOT, ChatTemplate
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

# the shapes of Qwen2.5's and Llama 3's templates (their tool branches left out): a default system
# prompt, special tokens around each turn, content trimmed; neither marks the assistant's tokens
QWEN = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
        "helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role != "
        "'system' or not loop.first %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
        "'\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA = ("{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']"
         "|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
         "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: "
         "26 Jul 2024\\n\\n' + system_message + '<|eot_id|>' }}{%- for message in messages %}{{- "
         "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
         "'<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- "
         "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]
CONVERSATION = [
    {"role": "system", "content": "answer briefly"},
    {"role": "user", "content": "<audio><audio>which one is louder?"},
    {"role": "assistant", "content": "the second one"},
    {"role": "user", "content": "and is <audio> a dog?"},
    {"role": "assistant", "content": "yes, a small dog"},
]


def _tokenizer():
    texts = ["which one is louder? the second one, and is a dog? yes, a small dog. answer briefly: "
             "user assistant system cutting knowledge date today you are qwen created by alibaba cloud"] * 4
    tok = _bpe_tokenizer(texts, 400, 1)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS, "bos_token": "<|begin_of_text|>"})
    return tok


@pytest.mark.parametrize("template, ends", [(DEFAULT_CHAT_TEMPLATE, "<|endoftext|>"), (QWEN, "<|im_end|>\n"),
                                            (LLAMA, "<|eot_id|>")], ids=["default (gpt2)", "qwen2.5", "llama3"])
def test_the_loss_covers_each_assistant_turn_and_nothing_else_token_by_token(template, ends):
    tok = _tokenizer()
    chat = ChatTemplate(tok, template)
    encoded = chat.encode(CONVERSATION)
    assert encoded.ids.count(AUDIO_SLOT) == 3 and not any(t for i, t in zip(encoded.ids, encoded.train)
                                                            if i == AUDIO_SLOT)
    runs, run = [], []  # the stretches of trained tokens, decoded
    for i, trained in zip(encoded.ids, encoded.train):
        if trained:
            run.append(i)
        elif run:
            runs, run = runs + [tok.decode(run)], []
    runs += [tok.decode(run)] if run else []
    space = " " if template is DEFAULT_CHAT_TEMPLATE else ""
    assert runs == [f"{space}the second one{ends}", f"{space}yes, a small dog{ends}"]
    # the untrained tokens are the rest of the rendered text, clips aside
    rest = tok.decode([i for i, t in zip(encoded.ids, encoded.train) if not t and i != AUDIO_SLOT])
    rendered = chat.render(CONVERSATION)
    for answer in runs:
        rendered = rendered.replace(answer, "", 1)
    assert rest == rendered.replace("<audio>", "")
    # generation stops at the template's end of an answer; the prompt for the next answer is
    # what training saw before the first answer
    assert tok.decode([chat.end_of_turn_id]) == ends.strip()
    prompt = chat.encode(CONVERSATION[:2], generation_prompt=True)
    assert not any(prompt.train) and encoded.ids[:len(prompt.ids)] == prompt.ids


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_reason():
    # as templates that drop an earlier answer's reasoning: the last answer differs from earlier ones
    rewrites = ("{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' and not loop.last %}..."
                "{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: "
                "{% endif %}")
    with pytest.raises(PengiKitError, match="renders the turns before message 3 differently"):
        ChatTemplate(_tokenizer(), rewrites).encode(CONVERSATION)


def test_the_chat_layout_has_no_prompt_branch_and_conversations_need_it(tmp_path):
    raw = tiny_recipe(tmp_path / "run")
    raw["model"]["layout"] = "chat"
    with pytest.raises(RecipeError, match="model.text_mapper: the chat layout has no prompt branch"):
        from_dict(raw)
    del raw["model"]["text_mapper"]
    assert from_dict(raw)["model"]["text_mapper"] == {"name": "none", "trainable": False}
    raw["data"]["train"] = [{"manifest": str(tmp_path / "c.jsonl"), "format": "sharegpt"}]
    raw["model"]["layout"] = "prefix"
    raw["model"]["text_mapper"] = {"name": "transformer", "prefix_length": 16, "num_layers": 1, "num_heads": 2}
    with pytest.raises(RecipeError, match=r"data.train\[0\].format: conversations are read by the chat layout"):
        from_dict(raw)


@pytest.mark.slow
def test_a_chat_model_learns_a_question_about_two_clips_and_listens(tmp_path):
    """Are two clips of the same kind? Each clip alone says nothing (half the pairs are of one
    kind), so only a model that reads both answers well above chance. The encoder is first
    pretrained as a tagger of the clips' kinds (the demo's two-stage path), then frozen; the chat
    model also learns from a Pengi manifest of one-clip questions, mixed in the same batches."""
    import pengi_kit
    from pengi_kit.data.tokenizer import word_tokenizer
    from pengi_kit.engine.trainer import Trainer
    from tests.models.chat_task import SAME, WHAT, words, write_task

    train_c, train_m, _ = write_task(tmp_path / "train", 300, 0)
    valid_c, valid_m, _ = write_task(tmp_path / "valid", 40, 1)
    _, test_m, test = write_task(tmp_path / "test", 100, 2)
    word_tokenizer([" ".join(words())]).save_pretrained(str(tmp_path / "tok"))
    encoder = {"name": "cnn14", "sample_rate": 16000, "width": 4, "clip_seconds": 0.5, "spec_augment": False,
               "num_classes": 3}
    Trainer(from_dict({
        "name": "tagger", "task": "tagging", "model": {"audio_encoder": encoder},
        "data": {"train": str(train_m), "valid": str(valid_m)},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.01},
        "train": {"batch_size": 16, "max_steps": 400, "log_every": 100, "output_dir": str(tmp_path / "tagger")},
    }), progress=False).fit()
    run = tmp_path / "chat"
    Trainer(from_dict({
        "name": "chat", "model": {
            "layout": "chat", "projection_dim": 32, "projection_dropout": 0.0, "target_length": 8,
            "audio_encoder": {**encoder, "pretrained": str(tmp_path / "tagger" / "encoder"), "trainable": False},
            "audio_mapper": {"name": "mlp", "prefix_length": 2},
            "lm": {"name": "gpt2", "pretrained": "", "tokenizer": str(tmp_path / "tok"), "n_layer": 2, "n_embd": 64,
                   "n_head": 4, "n_positions": 64, "dropout": 0.0, "trainable": True}},
        "data": {"train": [{"manifest": str(train_c)}, {"manifest": str(train_m), "weight": 0.25}],
                 "valid": str(valid_c)},
        "optim": {"lr": 2e-3, "warmup_steps": 30, "weight_decay": 0.01},
        "train": {"batch_size": 16, "max_steps": 1500, "log_every": 100, "eval_every": 500, "output_dir": str(run)},
        "generate": {"method": "greedy", "max_new_tokens": 4},
    }), progress=False).fit()
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "listening" in line][-1]
    assert last["listening"] > 1.0, last  # nats per answer lost when each clip's audio is another clip's

    pengi = pengi_kit.load(run)
    conversations = [[{"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "audio", "audio": b},
                                                   {"type": "text", "text": SAME}]}] for a, b, _ in test]
    answers = pengi.chat(conversations)
    accuracy = sum(got == want for got, (_, _, want) in zip(answers, test)) / len(test)
    assert accuracy >= 0.85, (accuracy, answers[:10])
    assert pengi.chat(conversations[:8], batch_size=1) == answers[:8]  # the same tokens at any batch size
    # the one-clip questions through generate (the prompt as one user turn)
    rows = [json.loads(line) for line in test_m.read_text().splitlines()]
    kinds = pengi.generate([str(test_m.parent / r["audio"]) for r in rows], WHAT)
    assert sum(k == r["text"] for k, r in zip(kinds, rows)) / len(rows) >= 0.9
    # and from the command line, with the clips placed by <audio>
    a, b, want = next(t for t in test if t[2] == "yes")
    out = subprocess.run([sys.executable, "-m", "pengi_kit", "chat", str(run), "--audio", a, "--audio", b,
                          f"<audio><audio>{SAME}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == pengi.chat(conversations[[t[0] for t in test].index(a)]) == "yes"
