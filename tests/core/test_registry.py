import pytest

from pengi_kit.registry import Registry, RegistryError


def test_lazy_factory_and_idempotent_registration():
    reg = Registry()
    reg.register("mapper", "m", "pengi_kit.components.mappers:mlp", plugin="a", aliases=["m2"])
    reg.register("mapper", "m", "pengi_kit.components.mappers:mlp", plugin="a", aliases=["m2"])  # again: no-op
    assert reg.names("mapper") == ["m"]
    assert reg.get("mapper", "m2").name == "m"
    from pengi_kit.components.mappers import mlp
    assert reg.get("mapper", "m").load() is mlp


def test_same_name_from_two_plugins_names_both():
    reg = Registry()
    reg.register("mapper", "m", "x:y", plugin="first")
    with pytest.raises(RegistryError, match="'first' and 'second'"):
        reg.register("mapper", "m", "x:z", plugin="second")


def test_unknown_component_suggests():
    reg = Registry()
    reg.register("causal_lm", "gpt2", "x:y", plugin="a")
    with pytest.raises(RegistryError, match="did you mean 'gpt2'"):
        reg.get("causal_lm", "gtp2")


def test_bad_kind_and_bad_factory_string():
    reg = Registry()
    with pytest.raises(RegistryError, match="unknown kind"):
        reg.register("vocoder", "v", "x:y", plugin="a")
    with pytest.raises(RegistryError, match="module:attr"):
        reg.register("mapper", "v", "no_colon", plugin="a")
    reg.register("mapper", "broken", "pengi_kit.nope:thing", plugin="a")
    with pytest.raises(RegistryError, match="cannot load factory"):
        reg.get("mapper", "broken").load()


def test_tasks_and_importers_register_only_through_their_own_hooks():
    reg = Registry()
    staging = reg.staged("p")
    staging.of("task")("t", "x:y", description="a task", aliases=["t2"])
    with pytest.raises(RegistryError, match="through register_components; use the register_importers hook"):
        staging("importer", "i", "x:z")
    staging.commit()
    assert reg.get("task", "t2").description == "a task" and reg.names("importer") == []
