"""Fast adversarial training (Wong, Rice, Kolter 2020, "Fast is better than free"): FGSM from a random start.

PGD-AT's objective with its own attack: one signed-gradient step of 1.25 eps (10/255 at eps 8/255) from a
uniform start in the eps-ball, with the model left in train mode during the attack as their code does
(BatchNorm on batch statistics). Trained with ``--lr-schedule cyclic`` (up to 0.2, 15 epochs) on a PreAct
ResNet-18 it is RobustBench's ``Wong2020Fast`` recipe: the project's known answer at scale. """

from __future__ import annotations

from agkd_bml.methods.pgd_at import PgdAt


class FastAt(PgdAt):
    summary = ("Fast AT (Wong et al. 2020): one FGSM step of 1.25 "
               "eps from a random start, BatchNorm in train mode.")
    name = "fast-at"
    default_steps = 1
    default_step = 1.25
    attack_in_train_mode = True
