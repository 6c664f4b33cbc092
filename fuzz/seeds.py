#!/usr/bin/env python3
"""Writes the seed corpora fuzz/seeds/<target>/ from the inputs of the crates' own
tests (each group names the tests it was taken from). The files are committed;
rerun this after adding interesting test inputs:  python3 fuzz/seeds.py

Each target's input starts with selector bytes (see the target's doc comment):
  frame_reader     [limit, split] + client frames   (limit 7 = 1 MiB, split 0 = one call)
  upgrade_request  [limit] + request head           (limit 3 = 8 KiB)
  client_message   text
  publish_body     [route] + body                   (0 publish, 1 broadcast, 2 batch)
"""
import hashlib
import shutil
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])  # the tests' mask (RFC 6455 §5.7)
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode, payload=b"", fin=True, mask=MASK, length_form=None):
    """A masked client frame; length_form 126/127 forces a (non-minimal) extended length."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    form = length_form or (n if n <= 125 else 126 if n <= 0xFFFF else 127)
    if form <= 125:
        head += bytes([0x80 | n])
    elif form == 126:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def frames(mask):
    """The reader tests' streams (crates/proto/src/inbound/tests.rs and
    crates/proto/tests/reader_props.rs), every frame masked with `mask`."""

    def f(opcode, payload=b"", **kw):
        return frame(opcode, payload, mask=mask, **kw)

    def close(code=None, reason=b""):
        return f(CLOSE, b"" if code is None else struct.pack(">H", code) + reason)

    return {
        "text": f(TEXT, b"Hello"),
        "empty_text": f(TEXT),
        "binary_256": f(BINARY, bytes(range(256))),
        "fragmented_text": f(TEXT, b"Hel", fin=False) + f(CONT, b"lo"),
        "fragments_with_ping": f(TEXT, b"He", fin=False) + f(PING, b"p")
        + f(CONT, b"llo", fin=False) + f(CONT, b"!"),
        "ping_pong": f(PING, b"hi") + f(PONG, b"") + f(PING, b"x" * 125),
        "ping_126": f(PING, b"x" * 126),
        "utf8_multibyte": f(TEXT, "κόσμε €𝄞".encode()),
        "utf8_split_code_point": f(TEXT, "é€".encode()[:3], fin=False)
        + f(CONT, "é€".encode()[3:]),
        "utf8_bad": f(TEXT, b"ok\xff"),
        "utf8_surrogate": f(TEXT, b"\xed\xa0\x80"),
        "utf8_truncated": f(TEXT, b"\xe2\x82"),
        "close_normal": close(1000, b"bye"),
        "close_empty": close(),
        "close_one_byte": f(CLOSE, b"\x03"),
        "close_1005": close(1005),
        "close_bad_reason": close(1000, b"\xc3\x28"),
        "text_then_close_then_text": f(TEXT, b"a") + close(1001) + f(TEXT, b"b"),
        "reserved_bits": bytes([0xC1]) + f(TEXT, b"x")[1:],
        "reserved_opcode": f(0x3, b"x"),
        "fragmented_ping": f(PING, b"x", fin=False),
        "continuation_first": f(CONT, b"x"),
        "new_message_in_message": f(TEXT, b"a", fin=False) + f(TEXT, b"b"),
        "nonminimal_16": f(TEXT, b"Hello", length_form=126),
        "nonminimal_64": f(BINARY, b"\x00" * 200, length_form=127),
        "length_top_bit": bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1]) + mask,
        "header_only_64": bytes([0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0]) + mask,
    }


# The RFC 6455 §5.7 examples, then the streams under the tests' mask and under an
# all-zero mask (valid: only the mask bit is required). Under the zero mask the input
# bytes are the bytes the reader compares, so libFuzzer's comparison tracing can steer
# them; through a non-zero mask it cannot.
FRAMES = {
    "rfc_masked_hello": bytes.fromhex("818537fa213d7f9f4d5158"),
    "rfc_unmasked_hello": bytes.fromhex("810548656c6c6f"),
    **frames(MASK),
    **{name + "_zero_mask": data for name, data in frames(bytes(4)).items()},
}

# crates/proto/src/handshake/tests.rs
SAMPLE = (
    "GET /chat?token=abc HTTP/1.1\r\n"
    "Host: server.example.com\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Protocol: v3\r\n"
    "Authorization: Bearer xyz\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n"
)


def plus_header(line):
    return SAMPLE[:-2] + line + "\r\n\r\n"


def with_header(name, line):
    out = []
    for part in SAMPLE.split("\r\n")[:-2]:
        if part.lower().startswith(name.lower() + ":"):
            if line:
                out.append(line)
        else:
            out.append(part)
    return "\r\n".join(out) + "\r\n\r\n"


REQUESTS = {
    "rfc_sample": SAMPLE,
    "rfc_sample_with_frame": SAMPLE + "\x81\x80",
    "minimal_mixed_case": "GET / HTTP/1.1\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, Upgrade\r\n"
    "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n",
    "bad_header_name": "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    "http2": "GET / HTTP/2.0\r\n\r\n",
    "bad_request_line": "GET /\x01 HTTP/1.1\r\n\r\n",
    "bad_header_value": "GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
    "post": SAMPLE.replace("GET", "POST", 1),
    "http10": SAMPLE.replace("HTTP/1.1", "HTTP/1.0", 1),
    "connection_keep_alive": with_header("Connection", "Connection: keep-alive"),
    "upgrade_list": with_header("Upgrade", "Upgrade: foo, WebSocket"),
    "version_8": with_header("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8"),
    "version_list": with_header("Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8"),
    "no_key": with_header("Sec-WebSocket-Key", ""),
    "key_padding_bits": with_header("Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR=="),
    "duplicate_key": plus_header("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="),
    "content_length": plus_header("Content-Length: 5"),
    "content_length_zero": plus_header("Content-Length: 0"),
    "chunked": plus_header("Transfer-Encoding: chunked"),
    "duplicate_host": plus_header("Host: other.example"),
    "protocols_messy": plus_header("Sec-WebSocket-Protocol:  a ,b,, c\t"),
    "query": SAMPLE.replace("/chat?token=abc", "/p?a=1&b=x%20y+z&&c&d=%zz%4&e=%C3%A9&f=%FF&a=2", 1),
    "many_headers": SAMPLE[:-2] + "".join(f"X-{i}: y\r\n" for i in range(70)) + "\r\n",
    "partial": SAMPLE[:40],
}

# crates/gateway/src/push/protocol.rs (tests)
CLIENT = [
    '{"op":"subscribe","channel":"scores"}',
    ' {"channel":"team:7", "op":"unsubscribe", "extra":[1,2]} ',
    '{"op":"ping"}',
    '{"op":"subscribe","channel":"a\\u003ab"}',
    '{"op":"ping","id":"abc"}',
    '{"op":"ping","id":-1.5e3}',
    '{"op":"ping","id":"\\u00e9"}',
    '{"op":"subscribe","channel":"s","id":42}',
    '{"op":"ping","id":null}',
    '{"op":"ping","id":{}}',
    '{"op":"ping","id":[1]}',
    "{",
    '{"op":"ping",}',
    '{"op":"ping"} trailing',
    '"subscribe"',
    '{"channel":"s"}',
    '{"op":null,"id":1}',
    '{"op":5}',
    '{"op":"subscribe","id":"q"}',
    '{"op":"unsubscribe","channel":7}',
    '{"op":"ping","op":"ping"}',
    '{"op":"publish","id":3}',
    '{"op":"subscribe","channel":"#user","id":1}',
    '{"op":"subscribe","channel":""}',
    '{"op":"unsubscribe","channel":"a b"}',
    '[{"op":"ping"}]',
    '{"op":"subscribe","channel":"scores","since":{"seq":40,"epoch":"Xy3kP0aQ"},"id":1}',
    '{"op":"subscribe","channel":"s","since":{"epoch":"","seq":0}}',
    '{"op":"subscribe","channel":"#user","since":null}',
    '{"op":"subscribe","channel":"s","since":40,"id":2}',
    '{"op":"subscribe","channel":"s","since":{"seq":40},"id":2}',
    '{"op":"subscribe","channel":"s","since":{"seq":-1,"epoch":"x"},"id":2}',
    '{"op":"subscribe","channel":"s","since":{"seq":"40","epoch":"x"},"id":2}',
    '{"op":"subscribe","channel":"s","since":{"seq":4,"epoch":"x","sqe":1},"id":2}',
]

# crates/gateway/src/push/publish.rs (tests)
PUBLISH = [
    '{"channel":"scores","data":{"home": 2, "away":1.50}}',
    '{"data":"hi","user":"42"}',
    '{"channel":"a","data":null}',
    '{"data":1}',
    '{"channel":"a","user":"b","data":1}',
    '{"channel":"a"}',
    '{"channel":7,"data":1}',
    '{"user":[],"data":1}',
    '{"user":"","data":1}',
    '{"channel":"a b","data":1}',
    '{"chanel":"a","data":1}',
    '{"channel":"a","data":}',
    '{"channel":"a","data":1} {}',
    '{"channel":"we\\"ird","data":[[[[{"a":[]}]]]]}',
]
BROADCAST = [
    '{"channels":["a","team:7"],"data":[1,2]}',
    '{"channels":"a","data":1}',
    '{"channels":[],"data":1}',
    '{"channels":["a",3],"data":1}',
    '{"channels":["a",""],"data":1}',
    '{"channels":["a","b","a"],"data":1}',
    '{"channels":["a"]}',
]
BATCH = [
    '{"messages":[{"channel":"a","data":1},{"user":"42","data":{"x":true}}]}',
    "{}",
    '{"messages":{}}',
    '{"messages":[]}',
    '{"messages":[{"channel":"a","data":1},7]}',
    '{"messages":[{"channel":"a","data":1},{"channel":"b"}]}',
    '{"messages":[{"data":1}]}',
    '{"messages":[{"user":"x","data":1},{"user":"a\\u0000","data":1}]}',
    '{"messages":[{"channel":"a","data":1,"extra":2}]}',
    '{"messages":[],"data":1}',
]


def write(target, name, data):
    folder = HERE / "seeds" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def named(text):
    return hashlib.sha1(text).hexdigest()[:12]


def main():
    shutil.rmtree(HERE / "seeds", ignore_errors=True)
    for name, data in FRAMES.items():
        write("frame_reader", name, bytes([7, 0]) + data)
    # The same streams with small limits and split into several calls.
    write("frame_reader", "text_split", bytes([7, 9]) + FRAMES["fragments_with_ping"])
    write("frame_reader", "zero_mask_split", bytes([7, 5]) + FRAMES["fragments_with_ping_zero_mask"])
    write("frame_reader", "limit_125", bytes([2, 3]) + FRAMES["binary_256"])
    write("frame_reader", "limit_0", bytes([0, 0]) + FRAMES["empty_text"] + FRAMES["text"])
    for name, text in REQUESTS.items():
        write("upgrade_request", name, bytes([3]) + text.encode("latin-1"))
    write("upgrade_request", "limit_256", bytes([1]) + SAMPLE.encode())
    for text in CLIENT:
        data = text.encode()
        write("client_message", named(data), data)
    for route, bodies in enumerate([PUBLISH, BROADCAST, BATCH]):
        for body in bodies:
            data = bytes([route]) + body.encode()
            write("publish_body", named(data), data)


if __name__ == "__main__":
    main()
