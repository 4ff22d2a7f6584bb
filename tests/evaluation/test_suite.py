"""Suite files: checked keys, missing data reported as skipped, the report files."""
import json

import pytest

from pengi_kit.errors import PengiKitError
from pengi_kit.evaluation.suite import load_suite, run_suite, table, write_report


def test_shipped_suites_load():
    from pengi_kit.recipe import shipped_recipes

    suites = [name for name in shipped_recipes() if name.startswith("eval/")]
    assert {"eval/pengi_paper", "eval/demo", "eval/mmau_mini", "eval/mmar", "eval/air_bench_foundation"} <= set(suites)
    for name in suites:
        _, specs = load_suite(name)
        assert specs and all(s.manifest and s.prepare or name == "eval/demo" for s in specs), name
        # every metric a suite lists is one its task computes (a typo would show as "not computed")
        for spec in specs:
            assert set(spec.published) <= set(spec.metrics or spec.published), (name, spec.name)
    _, specs = load_suite("recipes/eval/pengi_paper.toml")
    assert {s.task for s in specs} == {"captioning", "aqa", "classification", "retrieval", "linear-probe"}
    assert any(s.published.get("SPIDEr") == 0.467 for s in specs)


def test_bad_suite_names_the_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[task]]\nname = "x"\ntask = "captioning"\nmanifest = "m.jsonl"\nmetric = ["BLEU-4"]\n')
    with pytest.raises(PengiKitError, match=r"s.toml: task 1 \(x\): unknown key 'metric' \(did you mean 'metrics'"):
        load_suite(path)
    path.write_text('[[task]]\nname = "x"\ntask = "captioning"\nmanifest = "m.jsonl"\nlimit = "5"\n')
    with pytest.raises(PengiKitError, match="limit must be of type integer"):
        load_suite(path)
    path.write_text('[[task]]\nname = "x"\ntask = "caption"\nmanifest = "m.jsonl"\n')
    with pytest.raises(PengiKitError, match="unknown task 'caption'"):
        load_suite(path)


def test_missing_manifest_is_skipped_with_its_recipe(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('data_root = "nowhere"\n[[task]]\nname = "caps"\ntask = "captioning"\nmanifest = "m.jsonl"\n'
                    'metrics = ["CIDEr-D"]\npublished = { CIDEr-D = 0.75 }\n'
                    'prepare = "pengi-kit data prepare clotho --root C --out nowhere/m.jsonl"\n')
    name, specs = load_suite(path)
    run_suite(None, specs)  # nothing to run: the model is never touched
    assert specs[0].status.startswith("skipped: nowhere/m.jsonl not found (make it: pengi-kit data prepare clotho")
    text = table(specs)
    assert "caps" in text and "CIDEr-D" in text and "0.7500" in text and "make it:" in text
    write_report(tmp_path / "out", name, specs, "ckpt")
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["tasks"][0]["status"].startswith("skipped")
    assert "| caps | CIDEr-D |" in (tmp_path / "out" / "results.md").read_text()
