"""The built-in plugin: what pengi-kit itself registers, through the ``pengi_kit`` entry point
group that third-party plugins use (its name there: ``builtin``). Each family's table lives in
the module named for it: :mod:`pengi_kit.components.builtin` (the zoo),
:mod:`pengi_kit.data.datasets` (corpora), :mod:`pengi_kit.evaluation.builtin` (evaluation tasks),
:mod:`pengi_kit.convert.builtin` (checkpoint importers). Every target is a ``"module:attr"``
string: loading this plugin imports no torch and no importer."""
from pengi_kit.components import builtin as components
from pengi_kit.convert import builtin as importers
from pengi_kit.data import datasets
from pengi_kit.evaluation import builtin as tasks
from pengi_kit.hookspecs import hookimpl


@hookimpl
def register_components(register):
    components.register(register)
    datasets.register(register)


@hookimpl
def register_tasks(register):
    tasks.register(register)


@hookimpl
def register_importers(register):
    importers.register(register)
