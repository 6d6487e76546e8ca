"""What this machine is and what its kernel can do: environment facts and capability probes."""
