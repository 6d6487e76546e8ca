"""The only code that touches the OS: queue, firewall, injection, daemon, doctor, lab."""
