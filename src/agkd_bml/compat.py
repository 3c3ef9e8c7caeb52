"""Drop-ins for the two calls that robustness evaluation scripts already contain.

Switching a script from the reference AutoAttack or from RobustBench is one import line:

- ``from agkd_bml import AutoAttack`` for ``from autoattack import AutoAttack``: the same constructor and
  ``run_standard_evaluation(x, y, bs=...)``, returning the adversarial images (and labels), with the
  reference's log lines (initial accuracy, robust accuracy after each part, final robust accuracy).
- ``from agkd_bml import benchmark`` for ``from robustbench.eval import benchmark``: ``(clean_acc,
  robust_acc)`` of standard AutoAttack on the first ``n_examples`` test images.

Both run our AutoAttack (:class:`agkd_bml.attacks.AutoAttack`), which agrees image for image with the
reference; see docs/evaluation.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

from agkd_bml.api import attack
from agkd_bml.attacks.autoattack import COMPONENTS, RAND_COMPONENTS
from agkd_bml.attacks.norms import dataset_eps
from agkd_bml.data import load_dataset
from agkd_bml.device import resolve_device
from agkd_bml.errors import UserError
from agkd_bml.fileio import write_text
from agkd_bml.models.external import as_model
from agkd_bml.models.modes import eval_mode

#: the reference's norm names -> ours
_NORMS = {"Linf": "linf", "L2": "l2"}


class AutoAttack:
    """The reference AutoAttack's interface (``autoattack.AutoAttack``) over our implementation.

    ``version``: ``standard`` (APGD-CE, APGD-T, FAB-T, Square) or ``rand`` (APGD-CE and APGD-DLR with 20
    gradient samples, for randomized defences); ``norm``: ``Linf`` or ``L2``. ``model`` is any module from
    images in [0, 1] to logits, as the reference expects.

    >>> from agkd_bml import AutoAttack   # instead of: from autoattack import AutoAttack
    >>> adversary = AutoAttack(model, norm="Linf", eps=8 / 255, version="standard")  # doctest: +SKIP
    >>> x_adv = adversary.run_standard_evaluation(x_test,
    y_test, bs=250)  # doctest: +SKIP """

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 0.3, seed: int | None = None,
                 verbose: bool = True, attacks_to_run: list[str] | tuple[str, ...] = (),
                 version: str = "standard",
                 device: str | torch.device | None = None, log_path: str | None = None) -> None:
        if norm not in _NORMS:
            raise UserError(f"AutoAttack norm {norm!r} is not available here; use 'Linf' or 'L2'")
        if version not in ("standard", "rand"):
            raise UserError(f"AutoAttack version {version!r} is not available here; use 'standard' or 'rand' "
                            "(a custom list of parts: agkd_bml.attack with an 'aa' spec)")
        self.parts = COMPONENTS if version == "standard" else RAND_COMPONENTS
        if attacks_to_run and tuple(a.lower() for a in attacks_to_run) != self.parts:
            raise UserError(f"attacks_to_run {list(attacks_to_run)} differs from the {version} version's "
                            f"{list(self.parts)}; only the versions' own parts run here")
        self.model, self.norm, self.eps, self.version = model, norm, float(eps), version
        self.seed = 0 if seed is None else int(seed)
        self.verbose, self.log_path = verbose, log_path
        self.device = resolve_device(str(device) if device is not None else "auto")

    def _log(self, text: str) -> None:
        if not self.verbose:
            return
        if self.log_path is None:
            print(text, file=sys.stderr)
            return
        with open(self.log_path, "a") as f:
            f.write(text + "\n")

    def run_standard_evaluation(self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250,
                                return_labels: bool = False, state_path: str | None = None
                                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The adversarial images of ``x_orig`` (the clean image where no part broke it, or where the model is
        wrong clean), and with ``return_labels`` also the model's labels on them, as the reference returns."""
        if state_path is not None:
            raise UserError("state_path: resume an interrupted evaluation "
                            "with agkd_bml.evaluate(..., state=DIR)")
        spec = "aa" if self.version == "standard" else "aa-rand"
        started = time.perf_counter()
        self._log(f"using {self.version} version including {', '.join(self.parts)}.")
        out = attack(self.model, x_orig, y_orig, spec, eps=self.eps, norm=_NORMS[self.norm],
                     device=self.device,
                     batch_size=bs, seed=self.seed)
        n, robust = out.robust.numel(), int(out.clean_correct.sum())
        self._log(f"initial accuracy: {100 * robust / n:.2f}%")
        # the reference's running tally, from which part broke each image, and its running time: the
        # time before the first part (the clean pass) plus each part's seconds so far
        seconds = out.seconds_by or {}
        elapsed = time.perf_counter() - started - sum(seconds.values())
        for part in self.parts:
            robust -= sum(b == part for b in out.broken_by or [])
            elapsed += seconds.get(part, 0.0)
            self._log(f"robust accuracy after {part.upper()}: {100 * robust / n:.2f}% (total time "
                      f"{elapsed:.1f} s)")
        self._log(f"robust accuracy: {100 * out.accuracy:.2f}%")
        x_adv = out.images.to(x_orig.device)
        if not return_labels:
            return x_adv
        net = as_model(self.model)
        with torch.no_grad(), eval_mode(net):
            labels = torch.cat([net(x_adv[i:i + bs].to(self.device)).logits.argmax(1).cpu()
                                for i in range(0, x_adv.shape[0], bs)])
        return x_adv, labels.to(x_orig.device)


def benchmark(model: nn.Module, n_examples: int = 10_000, dataset: str = "cifar10",
              threat_model: str = "Linf",
              to_disk: bool = False, model_name: str | None = None, data_dir: str = "./data",
              device: str | torch.device | None = None, batch_size: int = 32, eps: float | None = None,
              log: TextIO | None = None) -> tuple[float, float]:
    """RobustBench's ``benchmark``: ``(clean_acc, robust_acc)`` (fractions) of standard AutoAttack on the
    first ``n_examples`` test images of ``dataset`` (a name such as ``cifar10``, downloaded into ``data_dir``
    by torchvision, or ``npz:PATH``). ``eps`` defaults to the threat model's (8/255 Linf, 0.5 L2 on CIFAR).
    ``to_disk`` writes the result to
    ``model_info/<dataset>/<threat_model>/<model_name>.json``, as RobustBench does.
    """
    if threat_model not in _NORMS:
        raise UserError(f"threat_model {threat_model!r} is not available here; use 'Linf' or 'L2'")
    if to_disk and not model_name:
        raise UserError("to_disk=True needs a model_name (the file's name)")
    data = load_dataset(dataset, data_dir=data_dir, download=not dataset.startswith("npz:"))
    norm = _NORMS[threat_model]
    eps = dataset_eps(data.spec, norm) if eps is None else eps
    n = min(n_examples, data.x_test.shape[0])
    if n < n_examples:
        print(f"note: {data.spec.name} has {n} test images; evaluating all of them, not {n_examples}",
              file=log or sys.stderr)
    out = attack(model, data.x_test[:n], data.y_test[:n], "aa", eps=eps, norm=norm,
                 device=resolve_device(str(device) if device is not None else "auto"), batch_size=batch_size)
    clean_acc, robust_acc = float(out.clean_correct.float().mean()), out.accuracy
    if to_disk:
        record = {"model_name": model_name, "dataset": data.spec.name, "threat_model": threat_model,
                  "eps": eps,
                  "n_examples": n, "clean_acc": clean_acc, "autoattack_acc": robust_acc, "attack": out.attack}
        path = Path("model_info") / data.spec.name / threat_model / f"{model_name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(record, indent=2) + "\n")
    return clean_acc, robust_acc
