"""Loss terms and the views of a sample they read: registries of what an objective can weight.

An objective of the config is a weighted sum of terms (cleanclip_core.objectives computes it).
A term names its loss function by import path, (TermInputs) -> scalar tensor, and declares what
it needs: extra views of each sample, a frozen reference copy of the starting model, class
labels. A view names its builder, (ViewContext) -> ViewSource (cleanclip_core.training.views).
"""

from dataclasses import dataclass

from cleanclip_core.registry import Registry


@dataclass(frozen=True)
class Term:
    name: str
    loss: str
    """`module:function` of its loss, (TermInputs) -> a scalar tensor."""
    views: tuple[str, ...] = ()
    """Names of the views whose fields the term reads."""
    needs_reference: bool = False
    """A frozen copy of the starting model: its features, and the module itself, reach the term."""
    needs_labels: bool = False
    description: str = ""
    """What the term is, for the config's reference (docs/configuration.md)."""


@dataclass(frozen=True)
class View:
    name: str
    build: str
    """`module:function` (ViewContext) -> ViewSource, called once per run."""


TERMS = Registry("loss term", Term, (
    Term("mmcl", "cleanclip_core.objectives:mmcl_term", description="Image-text InfoNCE (CLIP's loss)."),
    Term(
        "inmodal", "cleanclip_core.objectives:inmodal_term", views=("augmented",),
        description="Image vs augmented image and text vs augmented text (CleanCLIP's self-supervised term).",
    ),
    Term(
        "supervised", "cleanclip_core.objectives:supervised_term", needs_labels=True,
        description="Cross-entropy of a linear head over the image embeddings, on labelled pairs (clean.labels).",
    ),
    Term(
        "subcaption", "cleanclip_core.defenses.ta_cleaner:subcaption_term", views=("subcaptions",),
        description="TA-Cleaner: image vs positive and negative sub-captions.",
    ),
    Term(
        "repulsion", "cleanclip_core.defenses.par:repulsion_term", needs_reference=True,
        description="PAR: minus the thresholded distance of the embeddings from the frozen start's.",
    ),
    Term(
        "roclip", "cleanclip_core.defenses.roclip:roclip_term",
        description="RoCLIP: the CLIP loss, or on matching epochs each image against its nearest caption of a pool.",
    ),
    Term(
        "safeclip", "cleanclip_core.defenses.safeclip:safeclip_term", views=("augmented",),
        description="SafeCLIP: in-modal warm-up, cross-augmented CLIP warm-up, then CLIP loss on the safe pairs and in-modal on the risky.",
    ),
    Term("retain", "cleanclip_core.defenses.ubt:retain_loss", description="UBT: image-text InfoNCE on the pairs outside the unlearning set."),
    Term("unlearn", "cleanclip_core.defenses.ubt:unlearn_loss", description="UBT: image-text cosine of the unlearning set's pairs, pushed down."),
), paths=("loss",))

VIEWS = Registry("view", View, (
    View("augmented", "cleanclip_core.training.views:augmented_views"),
    View("subcaptions", "cleanclip_core.defenses.ta_cleaner:subcaption_views"),
    View("perturbed", "cleanclip_core.defenses.par:perturbed_views"),
    View("roclip_augmented", "cleanclip_core.defenses.roclip:augmented_pairs"),
), paths=("build",))
