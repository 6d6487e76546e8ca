"""The enforcing process: queue, firewall rules, injection, conntrack, owner lookup, status, the run loop."""
