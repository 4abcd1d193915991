"""Label-consistent attack: the BadNet patch on images whose caption already names the target.

The captions stay as they are, so every poisoned pair looks correctly labelled; CleanCLIP
reports that this makes the backdoor hard to plant (its issue #2).
"""

from cleanclip_core.attacks import Attack, badnet, register

register(
    Attack(
        "label_consistent",
        badnet.build_trigger,
        replaces_caption=False,
        needs_target_in_caption=True,
    )
)
