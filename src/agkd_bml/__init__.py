"""agkd-bml: AGKD-BML adversarial training and the methods it is compared with.

The package is laid out by job, in layers that import only downwards (checked by ``lint-imports``):
:mod:`agkd_bml.cli` (the commands) above :mod:`agkd_bml.analysis` and :mod:`agkd_bml.train` (the one training
loop), above :mod:`agkd_bml.evaluation` and :mod:`agkd_bml.methods` (one training objective per file), above
:mod:`agkd_bml.attacks`, :mod:`agkd_bml.models` (networks that return logits, last feature map and embedding
in one pass), :mod:`agkd_bml.data` (datasets as in-memory uint8 tensors) and :mod:`agkd_bml.config`.
:mod:`agkd_bml.api` (``agkd_bml.attack``, ``agkd_bml.evaluate``) is the evaluator as Python functions for any
model; :mod:`agkd_bml.compat` holds drop-ins for the reference AutoAttack (``agkd_bml.AutoAttack``) and
RobustBench (``agkd_bml.benchmark``). """

__version__ = "0.2.0"

#: what ``from agkd_bml import *`` gives; each name is imported on first use (``import agkd_bml`` stays light
#: and changes nothing in the process: no environment variable, no torch setting)
__all__ = ["AttackOutput", "AutoAttack", "Evaluation", "UserError", "attack", "benchmark", "evaluate",
           "evaluate_dataset"]
_HOMES = {"attack": "api", "AttackOutput": "api", "evaluate": "api", "evaluate_dataset": "api",
          "Evaluation": "api",
          "AutoAttack": "compat", "benchmark": "compat", "UserError": "errors"}


def __getattr__(name: str) -> object:
    """The public names of :data:`__all__`, imported from their modules on first use."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"agkd_bml.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'agkd_bml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
