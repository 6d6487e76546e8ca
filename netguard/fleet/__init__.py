"""The organisation's policy: a signed document on an HTTPS server, fetched, verified, kept, checked in.

minisign (formats and verification) and document (what a signed policy must satisfy before it is
used) are pure and tested without root; source (the configuration), state (the last good document
on disk), checkin (the machine id and the request headers), fetch (HTTPS with ETags) and client
(the polling thread that hands verified policies to the daemon's loop) do the I/O.
"""
