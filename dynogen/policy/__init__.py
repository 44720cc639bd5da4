"""Data policies: which licences, languages and splits a run may turn into training data.

Pure rules in ``licenses``, ``languages`` and ``splits``; ``gate`` applies them to
a source before any request is sent (and opens rows, the one I/O step).
"""

from dynogen.policy.gate import Policies, gate
from dynogen.policy.languages import LanguagePolicy
from dynogen.policy.licenses import LicensePolicy, license_class, license_ids
from dynogen.policy.splits import SplitPolicy, split_kind

__all__ = ["LanguagePolicy", "LicensePolicy", "Policies", "SplitPolicy", "gate",
           "license_class", "license_ids", "split_kind"]
