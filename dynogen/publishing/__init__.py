"""Putting a run's or a collection's instances on the Hugging Face Hub, with a dataset card.

``stage`` writes the shards and the card locally with their hashes, ``remote``
talks to one dataset repository through ``huggingface_hub``, and ``push.publish``
runs the steps: stage, read the repository, the licence gate, compare, commit
only what changed. (Named ``publishing``, not ``publish``: a subpackage would
shadow the function ``dynogen.publish``.)
"""

from dynogen.publishing.push import FileAction, PublishResult, publish

__all__ = ["FileAction", "PublishResult", "publish"]
