"""QR codes for presentations: phone-side rendering (segno), kiosk-side decoding (zxing-cpp).

Rendering always uses a full QR code at error level M without boosting (``segno.make`` would
pick a Micro QR for short data and silently raise the level, changing the version). A typical
presentation (~800 characters, base64url + ``.`` and ``~``) needs version 22-23 at level M.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import segno
import zxingcpp
from PIL import Image

ERROR_LEVEL = "m"
_QR_ONLY: Any = zxingcpp.BarcodeFormat.QRCode


def make(presentation: str) -> Any:
    """The segno QR code object for a presentation (byte mode, level M, no boost)."""
    return segno.make_qr(presentation, error=ERROR_LEVEL, boost_error=False)


def version_of(presentation: str) -> int:
    return int(make(presentation).version)


def render_png(presentation: str, *, scale: int = 4, border: int = 4) -> bytes:
    out = io.BytesIO()
    make(presentation).save(out, kind="png", scale=scale, border=border)
    return out.getvalue()


def render_svg(presentation: str, *, scale: int = 4, border: int = 4) -> bytes:
    out = io.BytesIO()
    make(presentation).save(out, kind="svg", scale=scale, border=border)
    return out.getvalue()


def save(presentation: str, path: str | Path, *, scale: int = 4) -> Path:
    """Write PNG or SVG by the file's extension."""
    target = Path(path)
    data = (
        render_svg(presentation, scale=scale)
        if target.suffix.lower() == ".svg"
        else (render_png(presentation, scale=scale))
    )
    target.write_bytes(data)
    return target


def decode(image: str | Path | bytes | Image.Image) -> str | None:
    """The first QR code's text in a camera image (path, encoded bytes or PIL image), if any."""
    if isinstance(image, Image.Image):
        picture = image
    elif isinstance(image, bytes | bytearray):
        picture = Image.open(io.BytesIO(image))
    else:
        picture = Image.open(Path(image))
    picture.load()
    if picture.mode not in ("L", "RGB"):
        picture = picture.convert("RGB")
    for result in zxingcpp.read_barcodes(picture, formats=_QR_ONLY):
        if result.valid and result.text:
            return str(result.text)
    return None
