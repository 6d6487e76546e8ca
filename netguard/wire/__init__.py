"""Sans-I/O parsers: bytes in, frozen values out. Nothing here may do I/O."""
