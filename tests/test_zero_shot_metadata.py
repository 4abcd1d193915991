"""open_clip's zero-shot metadata, read without importing open_clip's package (and torch)."""

from cleanclip_core.zero_shot_metadata import imagenet_classnames, openai_imagenet_templates


def test_imagenet_class_names_are_open_clips():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    assert imagenet_classnames() == list(IMAGENET_CLASSNAMES)


def test_openai_templates_are_open_clips():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    ours = [template("banana") for template in openai_imagenet_templates()]
    assert ours == [template("banana") for template in OPENAI_IMAGENET_TEMPLATES]
    assert len(ours) == 80
