"""A small HTTP/2 cleartext server (prior knowledge) for the namespace lab, made with the `h2` library:
every request is answered 200 with the :authority it named. Run inside the registry namespace:

    python h2cserver.py PORT
"""

from __future__ import annotations

import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def serve(conn: socket.socket) -> None:
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    h2conn.initiate_connection()
    conn.sendall(h2conn.data_to_send())
    with conn:
        while data := conn.recv(65536):
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    fields = {bytes(k): bytes(v) for k, v in event.headers or ()}
                    body = b"h2c " + fields.get(b":authority", b"") + b"\n"
                    h2conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                    h2conn.send_data(event.stream_id, body, end_stream=True)
            conn.sendall(h2conn.data_to_send())


def main() -> None:
    sock = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
