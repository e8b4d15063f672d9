"""Wire encodings a message is sent in, built once per message and shared by every subscriber.

A server's WebSocket frames are not masked (RFC 6455 §5.1) and, without
permessage-deflate, the same message makes the same bytes for every connection.
Likewise one SSE event makes one HTTP/1.1 chunk (RFC 9112 §7.1).
"""

from __future__ import annotations

import struct

_TEXT_FIN = 0x81  # FIN + opcode 1 (text)
_BINARY_FIN = 0x82  # FIN + opcode 2 (binary)


def websocket_frame(payload: bytes, *, binary: bool = False) -> bytes:
    """One unmasked, unfragmented WebSocket data frame (RFC 6455 §5.2)."""
    first = _BINARY_FIN if binary else _TEXT_FIN
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def websocket_text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame."""
    return websocket_frame(payload)


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked HTTP/1.1 body; never empty (that ends the body)."""
    if not data:
        raise ValueError("an empty chunk would end the HTTP/1.1 body")
    return b"%x\r\n%s\r\n" % (len(data), data)
