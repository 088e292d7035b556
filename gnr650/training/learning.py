"""Did the run learn? A run that finished but learned nothing must say so, not just report chance accuracy."""

from __future__ import annotations

import math

# Final train accuracy at most this many points (fractions) above chance, 1/num_classes: the run did not learn.
NEAR_CHANCE = 0.05
# The last epoch's training loss this many times the first epoch's, or this many times ln(num_classes) (the loss
# of guessing every class alike): the loss exploded.
LOSS_GROWTH = 10.0


def learning_warnings(
    train_acc: float | None, train_losses: list[float], num_classes: int, learning_rates: str
) -> list[str]:
    """The warnings of a run that trained: its final ``train_acc`` within ``NEAR_CHANCE`` of chance, or its epochs'
    ``train_losses`` (first to last) ending ``LOSS_GROWTH`` times above the first or above ln(num_classes).

    ``learning_rates`` names the settings used (e.g. ``optimizer.lr_head=10.0, optimizer.lr_backbone=10.0``),
    the likely cause. Empty when the run learned.
    """
    chance = 1 / num_classes
    near_chance = train_acc is not None and train_acc <= chance + NEAR_CHANCE
    uniform = math.log(num_classes)
    exploded = bool(train_losses) and (
        train_losses[-1] > LOSS_GROWTH * uniform or train_losses[-1] >= LOSS_GROWTH * train_losses[0] > 0
    )
    if not (near_chance or exploded):
        return []
    symptoms = []
    if near_chance:
        symptoms.append(
            f"final train accuracy {train_acc:.2%} is within {100 * NEAR_CHANCE:.0f} points of chance ({chance:.2%}, "
            f"{num_classes} classes)"
        )
    if exploded:
        symptoms.append(
            f"the training loss grew to {train_losses[-1]:.4g} in the last epoch (first epoch {train_losses[0]:.4g}; "
            f"guessing every class alike scores ln {num_classes} = {uniform:.3g})"
        )
    cause = (
        f"the learning rate is too high ({learning_rates}): lower it"
        if exploded
        else f"the learning rate ({learning_rates}), too low or too high, or too few epochs"
    )
    return [f"{'Did not learn' if near_chance else 'Diverging'}: {'; '.join(symptoms)}. Likely cause: {cause}."]
