"""Sans-I/O parsers: bytes in, frozen values out. Nothing here may do I/O.

Strategy: every read bounds-checked by one cursor discipline (`reader.Reader`; the per-packet paths
keep its state in locals, see reader.py) and one error family
(`errors.ParseError`: `Truncated` when more bytes could complete the input, `Malformed` when they
could not, `UnsupportedVersion` for QUIC versions other than 1). Modules: `ip` (IPv4/IPv6 with the
extension chain, TCP, UDP), `dns` (messages, TCP framing, blocked replies with Extended DNS Errors),
`tls` (incremental ClientHello, alert bytes), `http` (request head, CONNECT), `quic` (v1 Initial
decryption and CRYPTO reassembly).
"""
