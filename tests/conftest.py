import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one torch thread per test process (training's adaptive choice, devices.TrainingThreads, steps
# aside for a set count): results do not depend on what else runs, and subprocesses inherit it
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_plugins():
    from pengi_kit import plugins

    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def learning_seed(request, record_property):
    """The seed of a learning test (marked ``learning``): its corpora, its torch seed and its
    recipe's seed follow it. 0 unless PENGI_KIT_TEST_SEED says; scripts/learning_spread.py reruns
    the learning tests over several seeds and prints the spread of each figure they record
    (``record_property``, as plain floats: test workers send them to the main process), from which
    each test's threshold is set well inside."""
    assert request.node.get_closest_marker("learning"), "learning_seed is for tests marked learning"
    seed = int(os.environ.get("PENGI_KIT_TEST_SEED", "0"))
    record_property("seed", seed)
    return seed


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """A tiny untrained model saved as a run's checkpoint (``<run>/checkpoints/step-00000000``),
    for tests of what commands print and refuse: no test trains a model only to check output."""
    import torch

    from pengi_kit.checkpoint import save_checkpoint
    from pengi_kit.model import build_model
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("untrained") / "run"
    recipe = from_dict({**tiny_recipe(run), "generate": {"method": "greedy", "max_new_tokens": 4}})
    return save_checkpoint(run / "checkpoints" / "step-00000000", build_model(recipe), recipe)
