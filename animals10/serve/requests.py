"""Reading a request's photos: raw body or multipart, size limits enforced while streaming, and every
bad request turned into a `RequestError` that says what was wrong (the server carries on)."""

from __future__ import annotations

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from animals10.card import Preprocessing
from animals10.imaging import ImageDecodeError, load_array

RAW_BODY_TYPES = ("image/", "application/octet-stream")
# Decode-error kind -> HTTP status.
DECODE_ERROR_STATUS = {"empty": 400, "not_image": 415, "corrupt": 400, "too_large": 413}


class RequestError(Exception):
    """A bad request: answered with `status`, {"error": message} and `headers`, and the server carries on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def body_limit_error(max_body_bytes: int) -> RequestError:
    return RequestError(
        413, f"The request body is over the limit of {max_body_bytes / 1e6:g} MB; send a smaller photo."
    )


async def limited_stream(request: Request, max_body_bytes: int):
    """The body's chunks, failing as soon as more than `max_body_bytes` arrived (chunked uploads)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body_bytes:
            raise body_limit_error(max_body_bytes)
        if chunk:
            yield chunk


def check_content_length(request: Request, max_body_bytes: int) -> int | None:
    """Rejects a declared body over the limit before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        raise RequestError(400, f"The Content-Length header '{declared}' is not a number.") from None
    if length > max_body_bytes:
        raise body_limit_error(max_body_bytes)
    return length


async def read_photos(request: Request, max_body_bytes: int, max_files: int) -> list[tuple[str | None, bytes]]:
    """The request's photos as (file name or None, bytes); raises RequestError for bad requests."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type == "multipart/form-data" or content_type.startswith(RAW_BODY_TYPES)):
        raise RequestError(
            415,
            f"The content type '{content_type or 'none'}' is not supported; send a photo as image/* or files as "
            "multipart/form-data.",
        )
    if check_content_length(request, max_body_bytes) == 0:
        raise RequestError(400, "The request body is empty; send a photo.")
    if content_type != "multipart/form-data":
        body = bytearray()
        async for chunk in limited_stream(request, max_body_bytes):
            body += chunk
        if not body:
            raise RequestError(400, "The request body is empty; send a photo.")
        return [(None, bytes(body))]

    # Files over 1 MB spool to disk while parsing; the parser stops at the (max_files + 1)th file.
    parser = MultiPartParser(
        request.headers, limited_stream(request, max_body_bytes), max_files=max_files, max_fields=max_files
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        if "Too many files" in str(error):
            raise RequestError(
                400, f"The request holds more than {max_files} files; send at most {max_files} per request."
            ) from None
        raise RequestError(400, f"The multipart body cannot be parsed ({error}).") from None
    try:
        uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            raise RequestError(400, "The multipart body holds no files; send each photo as a file field.")
        return [(upload.filename, await upload.read()) for upload in uploads]
    finally:
        await form.close()


def decode_photo(name: str | None, data: bytes, preprocessing: Preprocessing) -> np.ndarray:
    """Bytes -> (S, S, 3) uint8 through the one decode path; bad photos become RequestErrors."""
    try:
        return load_array(data, preprocessing)
    except ImageDecodeError as error:
        what = f"The file '{name}'" if name else "The photo"
        raise RequestError(DECODE_ERROR_STATUS.get(error.kind, 400), f"{what} cannot be used: {error}.") from None
