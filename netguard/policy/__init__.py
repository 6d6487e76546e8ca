"""The registry catalog, policy files, host normalisation and matching, decide(). Pure."""
