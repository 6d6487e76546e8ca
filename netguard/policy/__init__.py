"""The registry catalog, policy text, host normalisation and matching, and decide(). Pure.

Files are read by netguard.daemon.policyfiles (load_policy, load_catalog); this package only parses
text that is handed to it.
"""

from netguard.policy.catalog import Catalog, Registry, parse_catalog
from netguard.policy.decide import Decision, decide
from netguard.policy.errors import PolicyError, Problem
from netguard.policy.hosts import HostError, Pattern, normalise_host, parse_pattern, split_port
from netguard.policy.policy import Policy, Rule, follow_mark, parse_policy, passed_mark, unconfirmed_mark

__all__ = [
    "Catalog", "Decision", "HostError", "Pattern", "Policy", "PolicyError", "Problem", "Registry", "Rule",
    "decide", "follow_mark", "normalise_host", "parse_catalog", "parse_pattern", "parse_policy", "passed_mark",
    "split_port", "unconfirmed_mark",
]
