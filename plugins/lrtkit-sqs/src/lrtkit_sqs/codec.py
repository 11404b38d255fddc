"""Bodies on the wire: text as is, anything else base64 with an ``lrt-encoding`` attribute.

An SQS message body is Unicode text restricted to ``#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD
#x10000-#x10FFFF``. Job bodies are JSON text and go out unchanged (the guide's workers read
them as they are). A body that is not such text (binary garbage, control characters) is sent
base64-encoded and marked with the message attribute ``lrt-encoding: base64`` so it comes back
byte for byte, and the worker can dead-letter it with a reason instead of the publisher
refusing it.
"""

from __future__ import annotations

import base64
import re
from typing import Any

ENCODING = "lrt-encoding"
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def to_wire(body: bytes) -> tuple[str, dict[str, Any]]:
    """The body as SQS text, plus the message attributes that say how to read it back."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not _NOT_SQS_TEXT.search(text):
        return text, {}
    encoded = base64.b64encode(body).decode("ascii")
    return encoded, {ENCODING: {"DataType": "String", "StringValue": "base64"}}


def from_wire(text: str, attributes: dict[str, Any] | None) -> bytes:
    """The original body of a received message."""
    attr = (attributes or {}).get(ENCODING) or {}
    if attr.get("StringValue") == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")


def wire_size(text: str, attributes: dict[str, Any]) -> int:
    """Bytes SQS counts against MaximumMessageSize: body plus attribute names, types, values."""
    size = len(text.encode("utf-8"))
    for name, attr in attributes.items():
        size += len(name.encode()) + len(str(attr.get("DataType", "")).encode())
        size += len(str(attr.get("StringValue", "")).encode())
    return size
