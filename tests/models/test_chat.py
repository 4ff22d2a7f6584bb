"""The chat layout: the loss mask token by token under real templates' shapes, a model that
learns a question about two clips (and listens), and chat inference from Python and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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
@pytest.mark.learning
def test_the_chat_walkthrough_learns_a_question_about_two_clips_and_listens(tmp_path, monkeypatch, learning_seed,
                                                                             record_property):
    """docs/training.md's walk-through, with the shipped recipes: are two clips of the same kind?
    Each clip alone says nothing (half the pairs are of one kind), so only a model that reads
    both answers well above chance. The encoder is first pretrained as a tagger of the clips'
    kinds, then frozen; the chat model also learns one-clip questions of a Pengi manifest, mixed
    into the same batches."""
    import pengi_kit
    from pengi_kit.data.synthetic import SAME_KIND, WHAT_KIND, write_pair_task
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    for split, pairs, seed in (("train", 300, 0), ("valid", 40, 1), ("test", 100, 2)):
        write_pair_task(f"chat_data/{split}", pairs, seed + 3 * learning_seed)
    Trainer(load_recipe("pretrain/pair_tagger", [f"seed={learning_seed}"]), progress=False).fit()
    Trainer(load_recipe("demo_chat", [f"seed={learning_seed}"]), progress=False).fit()
    run = tmp_path / "runs" / "demo_chat"
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "listening" in line][-1]
    record_property("listening, last validation", float(last["listening"]))
    # seeds 0-4 (scripts/learning_spread.py): listening 3.1-6.1 nats per answer lost when each clip's audio is
    # another clip's, held-out accuracy 1.0 on both questions (with batches sorted by answer length, two seeds
    # of five were below 0.85 and 0.9)
    assert last["listening"] > 1.0, last

    pengi = pengi_kit.load(run)
    test = json.loads((tmp_path / "chat_data" / "test" / "conversations.json").read_text())
    clips = [[str(tmp_path / "chat_data" / "test" / a) for a in row["audios"]] for row in test]
    truth = [row["messages"][1]["content"] for row in test]
    conversations = [[{"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "audio", "audio": b},
                                                   {"type": "text", "text": SAME_KIND}]}] for a, b in clips]
    answers = pengi.chat(conversations)
    accuracy = sum(got == want for got, want in zip(answers, truth)) / len(test)
    record_property("held-out accuracy, two clips", float(accuracy))
    assert accuracy >= 0.85, (accuracy, answers[:10])
    assert pengi.chat(conversations[:8], batch_size=1) == answers[:8]  # the same tokens at any batch size
    # the one-clip questions through generate (the prompt as one user turn)
    kinds = tmp_path / "chat_data" / "test" / "kinds.jsonl"
    rows = [json.loads(line) for line in kinds.read_text().splitlines()]
    said = pengi.generate([str(kinds.parent / r["audio"]) for r in rows], WHAT_KIND)
    kinds_accuracy = sum(k == r["text"] for k, r in zip(said, rows)) / len(rows)
    record_property("held-out accuracy, one clip", float(kinds_accuracy))
    assert kinds_accuracy >= 0.9
    # and from the command line, with the clips placed by <audio>
    n = truth.index("yes")
    out = subprocess.run([sys.executable, "-m", "pengi_kit", "chat", str(run), "--audio", clips[n][0], "--audio",
                          clips[n][1], f"<audio><audio>{SAME_KIND}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == answers[n]


def test_scoring_generation_and_training_see_the_same_sequence(tmp_path):
    """A chat model's log-likelihood of an answer (through the decoder's forked cache) is the
    training loss's sum over the same conversation; greedy decoding continues the same prefix;
    the listening check runs; and chat on Pengi's prefix layout is refused."""
    import numpy as np

    from pengi_kit.api import Pengi
    from pengi_kit.data.conversations import single_turn
    from pengi_kit.models import build_model

    raw = tiny_recipe(tmp_path / "run")
    del raw["model"]["text_mapper"]
    raw["model"]["layout"] = "chat"
    model = build_model(from_dict(raw)).eval()
    pengi = Pengi(model)
    rng = np.random.default_rng(0)
    clips = [(rng.uniform(-0.3, 0.3, 8000).astype(np.float32), 16000) for _ in range(3)]
    answers = ["a low tone", "no"]
    scores = pengi.log_likelihood(clips, "this is a sound of", answers, reduction="sum")
    for c, clip in enumerate(clips):
        for t, answer in enumerate(answers):
            batch = {"conversations": [single_turn("this is a sound of", answer)], "prompts": [""], "texts": [answer],
                     "audio": torch.from_numpy(clip[0])[None], "clips": ["x"]}
            with torch.no_grad():
                loss = model(**model.batch_inputs(batch))["loss_sum"]
            assert abs(float(scores[c, t]) + float(loss)) < 1e-4, (c, t, float(scores[c, t]), float(loss))
    text = pengi.generate(clips, "this is a sound of", max_new_tokens=3)
    assert text == [pengi.chat([{"role": "user", "content": [{"type": "audio", "audio": clip},
                                                             {"type": "text", "text": "this is a sound of"}]}],
                               max_new_tokens=3) for clip in clips]
    check = pengi.listening(clips, [(0, "this is a sound of", "a low tone"), (1, "this is a sound of", "no"),
                                    (2, "this is a sound of", "a high tone")])
    assert check["answers"] == 3 and np.isfinite(check["listening"])
    raw = tiny_recipe(tmp_path / "prefix")
    with pytest.raises(PengiKitError, match="prefix layout"):
        Pengi(build_model(from_dict(raw))).chat([{"role": "user", "content": "hi"}])


def test_a_conversation_longer_than_the_lms_positions_is_one_clear_line(tmp_path):
    from pengi_kit.models import build_model

    raw = tiny_recipe(tmp_path / "run")  # GPT-2 of 64 positions
    del raw["model"]["text_mapper"]
    raw["model"]["layout"] = "chat"
    model = build_model(from_dict(raw))
    long = [{"role": "user", "content": "<audio>" + "is there a low tone? " * 20}, {"role": "assistant", "content": "no"}]
    batch = {"conversations": [long], "prompts": [""], "texts": ["no"], "audio": torch.zeros(1, 8000), "clips": ["a"]}
    with pytest.raises(PengiKitError, match=r"a conversation of \d+ positions .* longer than the LM's 64"):
        model(**model.batch_inputs(batch))


def test_inputs_are_batch_first_so_micro_batches_add_up(tmp_path):
    """Rows of two, one and no clips: any slice of the rows (the trainer's grad_accum micro-batches)
    carries its own clips, and the slices' losses add up to the whole batch's."""
    from pengi_kit.models import build_model

    raw = tiny_recipe(tmp_path / "run")
    del raw["model"]["text_mapper"]
    raw["model"]["layout"] = "chat"
    model = build_model(from_dict(raw)).eval()
    conversations = [
        [{"role": "user", "content": "<audio><audio>is there a low tone?"}, {"role": "assistant", "content": "no"}],
        [{"role": "user", "content": "is there a tone?"}, {"role": "assistant", "content": "yes"}],
        [{"role": "user", "content": "<audio>what is it?"}, {"role": "assistant", "content": "a high tone"}],
    ]
    batch = {"conversations": conversations, "prompts": [""] * 3, "texts": ["no", "yes", "a high tone"],
             "audio": torch.randn(3, 8000) * 0.1, "clips": ["a", "b", "c"]}
    inputs = model.batch_inputs(batch)
    assert inputs["audio"].shape == (3, 2, 8000) and torch.equal(inputs["audio"][2, 0], batch["audio"][2])
    with torch.no_grad():
        whole = model(**inputs)["loss_sum"]
        parts = [model(**{k: v[a:b] for k, v in inputs.items()})["loss_sum"] for a, b in ((0, 1), (1, 3))]
        sums = model.validation_sums(inputs)
    torch.testing.assert_close(sum(parts), whole)
    assert sums["listening"][1] == 2  # the row without a clip has nothing to swap


def _chat_recipe(tmp_path, out="run", **lm):
    raw = tiny_recipe(tmp_path / out)
    del raw["model"]["text_mapper"]
    raw["model"]["layout"] = "chat"
    raw["model"]["lm"].update(lm)
    return raw


@pytest.mark.parametrize("lm", [{}, {"name": "causal-lm", "architecture": "llama", "hidden_size": 32, "num_layers": 1,
                                     "num_heads": 2, "max_positions": 64},
                                {"name": "causal-lm", "architecture": "qwen2", "hidden_size": 32, "num_layers": 1,
                                 "num_heads": 2, "max_positions": 64}], ids=["gpt2", "llama", "qwen2"])
def test_packed_rows_give_the_unpacked_loss(tmp_path, lm):
    from pengi_kit.models import build_model

    raw = _chat_recipe(tmp_path)
    if lm:
        raw["model"]["lm"] = {**lm, "tokenizer": "pengi_kit.data.synthetic:tokenizer", "trainable": True}
    torch.manual_seed(0)
    plain = build_model(from_dict(raw)).eval()
    packed = build_model(from_dict(raw, ["train.pack=true"])).eval()
    packed.load_state_dict(plain.state_dict())
    prompts = ["this is a sound of", "question: how many low tones are there?", "generate audio caption", "a"]
    texts = ["a low tone", "two", "two high tones followed by a click train and three low tones followed by a "
             "noise burst", "no"]
    batch = {"prompts": prompts, "texts": texts, "audio": torch.randn(4, 8000) * 0.1, "clips": list("abcd")}
    inputs = plain.batch_inputs(batch)
    shapes = []
    packed.lm.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[:2])))
    with torch.no_grad():
        a, b = plain(**inputs), packed(**inputs)
    assert a["tokens"] == b["tokens"] and shapes[0][0] < 4  # fewer sequences than rows
    torch.testing.assert_close(b["loss_sum"], a["loss_sum"], rtol=1e-5, atol=1e-5)


def test_an_lm_that_mixes_packed_rows_is_refused_with_its_name(tmp_path):
    from pengi_kit.models import build_model

    raw = _chat_recipe(tmp_path)
    raw["model"]["lm"] = {"name": "causal-lm", "architecture": "opt", "hidden_size": 32, "num_layers": 1,
                          "num_heads": 2, "max_positions": 64, "tokenizer": "pengi_kit.data.synthetic:tokenizer"}
    with pytest.raises(RecipeError, match=r"train.pack: the LM \(opt\) lets packed sequences attend to each other"):
        build_model(from_dict(raw, ["train.pack=true"]))
    raw["model"]["layout"] = "prefix"
    raw["model"]["text_mapper"] = {"name": "transformer", "prefix_length": 16, "num_layers": 1, "num_heads": 2}
    with pytest.raises(RecipeError, match="train.pack: packs the chat layout's conversations"):
        from_dict(raw, ["train.pack=true"])


def test_a_packed_run_resumes_bitwise(tmp_path):
    from pengi_kit.engine.trainer import Trainer

    def run(out, steps):
        raw = _chat_recipe(tmp_path, out)
        raw["train"].update(max_steps=steps, save_every=3, pack=True)
        return Trainer(from_dict(raw, ["optim.warmup_steps=2"]), resume=steps == 6 and out == "part", progress=False)

    run("full", 6).fit()
    run("part", 3).fit()
    run("part", 6).fit()
    losses = {out: [json.loads(line)["loss"] for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()
                    if '"loss"' in line] for out in ("full", "part")}
    assert len(losses["full"]) == 6 and losses["part"] == losses["full"]


def test_rows_the_model_cannot_read_are_reported_before_training_and_left_out(tmp_path):
    """A conversation longer than the LM's positions, and one the template refuses (two user turns
    in a row under a template that raises, as Mistral's does): each one line, before the first
    step; the run trains on the rest. With data.on_error = "fail", the first stops the run."""
    import soundfile as sf

    from pengi_kit.engine.trainer import Trainer, TrainingError

    sf.write(tmp_path / "a.wav", (torch.rand(8000) * 0.2 - 0.1).numpy(), 16000)
    good = {"messages": [{"role": "user", "content": "<audio>is there a low tone?"},
                         {"role": "assistant", "content": "yes"}], "audios": ["a.wav"]}
    long = {"messages": [{"role": "user", "content": "<audio>" + "is there a low tone? " * 20},
                         {"role": "assistant", "content": "no"}], "audios": ["a.wav"]}
    twice = {"messages": [{"role": "user", "content": "<audio>hi"}, {"role": "user", "content": "is there?"},
                          {"role": "assistant", "content": "no"}], "audios": ["a.wav"]}
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in [good] * 6 + [long, twice] + [good] * 6))
    strict = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
              "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['role'] }}: {{ m['content'] }}"
              "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
              "{% if add_generation_prompt %}assistant:{% endif %}")
    raw = _chat_recipe(tmp_path, chat_template=strict)
    raw["data"].update(train=str(tmp_path / "c.jsonl"), valid="")
    raw["train"].update(max_steps=2, batch_size=4)
    trainer = Trainer(from_dict(raw), progress=False)
    assert [e.split(": ", 1)[0] for e in trainer.bad_examples] == [f"{tmp_path / 'c.jsonl'}:7",
                                                                    f"{tmp_path / 'c.jsonl'}:8"]
    assert "longer than the LM's 64" in trainer.bad_examples[0] and "roles must alternate" in trainer.bad_examples[1]
    trainer.fit()
    with pytest.raises(TrainingError, match=r"c.jsonl:7: a conversation of \d+ positions"):
        Trainer(from_dict(raw, ["data.on_error=fail", f"train.output_dir={tmp_path / 'fail'}"]), progress=False)
