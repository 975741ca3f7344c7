"""One raw gRPC call over HTTP/2 (hyper-h2, not grpcio) on a Unix socket.

Sends the request with exactly the :authority asked for, byte for byte (or
none), to show which authorities the server answers. Example:

    python h2_call.py --socket /run/api.sock --authority 'tmp%2Fx.sock' \
        --path /SpiffeWorkloadAPI/FetchJWTSVID --header workload.spiffe.io=true \
        --body-hex 0a0474657374

Prints one JSON line:
    {"grpc_status": int|null, "grpc_message": str|null, "http_status": int|null,
     "reset": error_code|null, "messages_hex": [payload hex, prefix stripped]}
Exit 0 when the exchange completed (stream ended or reset, whatever the
status); exit 2 when the connection failed (refused, closed, GOAWAY, timeout).
Server streams that stay open (FetchJWTBundles, FetchX509SVID) need
--max-messages N: after N messages the stream is cancelled (RST_STREAM CANCEL)
and the exchange counts as completed, with grpc_status null.
"""

import argparse
import json
import socket
import struct
import sys
import urllib.parse

import h2.config
import h2.connection
import h2.errors
import h2.events

TIMEOUT_S = 10


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    a = p.add_mutually_exclusive_group(required=True)
    a.add_argument("--authority")
    a.add_argument("--no-authority", action="store_true")
    p.add_argument("--path", required=True)
    p.add_argument("--body-hex", default="")
    p.add_argument("--header", action="append", default=[], metavar="K=V")
    p.add_argument("--max-messages", type=int, default=None)
    return p.parse_args()


def grpc_messages(data):
    """Splits the gRPC length-prefixed messages: 1 flag byte, 4-byte big-endian length."""
    out = []
    while len(data) >= 5:
        (length,) = struct.unpack(">I", data[1:5])
        if len(data) < 5 + length:
            break  # the rest has not arrived yet
        out.append(data[5 : 5 + length].hex())
        data = data[5 + length :]
    return out


def call(args):
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", args.path.encode())]
    if not args.no_authority:
        headers.append((b":authority", args.authority.encode()))
    headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    for h in args.header:
        k, _, v = h.partition("=")
        headers.append((k.encode(), v.encode()))
    body = bytes.fromhex(args.body_hex)
    body = b"\x00" + struct.pack(">I", len(body)) + body

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    sock.connect(args.socket)

    # No validation or normalisation: h2 would otherwise refuse an empty or
    # odd :authority before it reaches the wire. header_encoding=None keeps
    # received headers as bytes.
    config = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        header_encoding=None,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers)
    conn.send_data(stream_id, body, end_stream=True)
    sock.sendall(conn.data_to_send())

    resp_headers, trailers, data, reset = {}, {}, b"", None
    done = False
    while not done:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"the stream did not end within {TIMEOUT_S} s") from None
        if not chunk:
            raise ConnectionError("connection closed before the stream ended")
        for event in conn.receive_data(chunk):
            if getattr(event, "stream_id", stream_id) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                resp_headers = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                data += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                if args.max_messages is not None and len(grpc_messages(data)) >= args.max_messages:
                    conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    done = True
                    break
            elif isinstance(event, h2.events.StreamEnded):
                done = True
            elif isinstance(event, h2.events.StreamReset):
                reset, done = int(event.error_code), True
            elif isinstance(event, h2.events.ConnectionTerminated) and not done:
                raise ConnectionError(f"GOAWAY {event.error_code!r} before the stream ended")
        sock.sendall(conn.data_to_send())  # SETTINGS acks, WINDOW_UPDATEs
    sock.close()

    # A Trailers-Only answer carries grpc-status in the response headers.
    status = trailers.get(b"grpc-status", resp_headers.get(b"grpc-status"))
    message = trailers.get(b"grpc-message", resp_headers.get(b"grpc-message"))
    http_status = resp_headers.get(b":status")
    return {
        "grpc_status": int(status) if status is not None else None,
        # grpc-message is percent-encoded on the wire.
        "grpc_message": urllib.parse.unquote(message.decode()) if message is not None else None,
        "http_status": int(http_status) if http_status is not None else None,
        "reset": reset,
        "messages_hex": grpc_messages(data),
    }


if __name__ == "__main__":
    args = parse_args()
    try:
        result = call(args)
    except (OSError, ConnectionError) as err:  # socket.timeout is an OSError
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))
