"""The recording store: support sessions' asciicast recordings, kept as the chunks the agent sent (docs/sessions.md).

Two backends behind one interface: `file://<dir>` (`<dir>/<session id>/<seq:08d>.cast`, files 0600, dirs 0700)
and `s3://bucket/prefix` (objects `<prefix>/<session id>/<seq:08d>.cast`, boto3). A chunk is written once
(the first write of a seq wins) and readers never see half of one.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from portal.settings import Settings

MAX_SEQ = 99_999_999  # eight digits in the names
_CHUNK_NAME = re.compile(r"^(\d{8})\.cast$")


def session_key(session_id: uuid.UUID | str) -> str:
    """The canonical form of a session id, the only thing that ever becomes part of a path or key.

    Anything that is not a UUID raises `ValueError`, so no id can name a file outside the store.
    """
    try:
        return str(session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id)))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError("a recording's session id must be a UUID") from exc


def chunk_name(seq: int) -> str:
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:  # bool is not a seq
        raise ValueError(f"a recording chunk's seq must be a whole number in 0..{MAX_SEQ}")
    return f"{seq:08d}.cast"


class RecordingStore:
    """Where recordings live. `from_settings` picks the backend from `KAIDEN_RECORDINGS_URL`."""

    location: str
    writers = 1  # how many threads should write chunks at once (see ControllerHub)

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingStore:
        return cls.from_location(settings.recordings_location, s3_endpoint_url=settings.s3_endpoint_url)

    @classmethod
    def from_location(cls, location: str, *, s3_endpoint_url: str | None = None) -> RecordingStore:
        parts = urlsplit(location)
        if parts.scheme == "file":
            path = unquote(parts.path)
            if parts.netloc not in ("", "localhost") or not path.startswith("/"):
                raise ValueError(f"recordings location {location!r}: file:// needs an absolute directory")
            return FileRecordingStore(Path(path))
        if parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"recordings location {location!r}: s3:// needs a bucket")
            return S3RecordingStore(parts.netloc, parts.path.strip("/"), endpoint_url=s3_endpoint_url)
        raise ValueError(f"recordings location {location!r}: expected file:///dir or s3://bucket/prefix")

    def put_chunk(self, session_id: uuid.UUID | str, seq: int, data: bytes) -> bool:
        """Store chunk `seq` of a session's recording; False (and nothing written) when it is already there."""
        raise NotImplementedError

    def chunks(self, session_id: uuid.UUID | str) -> list[int]:
        """The seqs stored for a session, ascending."""
        raise NotImplementedError

    def read_chunk(self, session_id: uuid.UUID | str, seq: int) -> bytes:
        raise NotImplementedError

    def delete(self, session_id: uuid.UUID | str) -> None:
        """Remove a session's recording (nothing to remove is fine)."""
        raise NotImplementedError

    def has(self, session_id: uuid.UUID | str) -> bool:
        return bool(self.chunks(session_id))

    def read(self, session_id: uuid.UUID | str) -> bytes:
        """The recording so far: its chunks concatenated in seq order (a lost chunk is a gap, not an error)."""
        return b"".join(self.read_chunk(session_id, seq) for seq in self.chunks(session_id))

    def path_of(self, session_id: uuid.UUID | str) -> str:
        """Where a session's chunks are, as stored in `support_sessions.recording_path`."""
        return f"{self.location.rstrip('/')}/{session_key(session_id)}"


class FileRecordingStore(RecordingStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = f"file://{root}"

    def _dir(self, session_id: uuid.UUID | str) -> Path:
        return self.root / session_key(session_id)

    @staticmethod
    def _private_dir(path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != 0o700:  # mkdir's mode yields to the umask; a pre-made dir may be wider
            os.chmod(path, 0o700)

    def put_chunk(self, session_id: uuid.UUID | str, seq: int, data: bytes) -> bool:
        name = chunk_name(seq)
        directory = self._dir(session_id)
        target = directory / name
        if target.exists():
            return False
        self._private_dir(self.root)
        self._private_dir(directory)
        temporary = directory / f".{name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(bytes(data))
                handle.flush()
                os.fsync(handle.fileno())
            # link, not rename: the complete file appears at once and an existing chunk is never replaced
            try:
                os.link(temporary, target)
            except FileExistsError:
                return False
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_dir(directory)
        return True

    def chunks(self, session_id: uuid.UUID | str) -> list[int]:
        try:
            names = os.listdir(self._dir(session_id))
        except FileNotFoundError:
            return []
        return sorted(int(match.group(1)) for name in names if (match := _CHUNK_NAME.match(name)))

    def read_chunk(self, session_id: uuid.UUID | str, seq: int) -> bytes:
        return (self._dir(session_id) / chunk_name(seq)).read_bytes()

    def delete(self, session_id: uuid.UUID | str) -> None:
        directory = self._dir(session_id)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            (directory / name).unlink(missing_ok=True)
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3RecordingStore(RecordingStore):
    """Objects in an S3 bucket (AWS, or any S3-compatible API at `endpoint_url`); credentials the boto3 way."""

    writers = 8  # a PUT is mostly waiting on the network

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (no connection or credential lookup at construction)."""
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url)
            return self._client

    def _base(self, session_id: uuid.UUID | str) -> str:
        key = session_key(session_id)
        return f"{self.prefix}/{key}/" if self.prefix else f"{key}/"

    def key_of(self, session_id: uuid.UUID | str, seq: int) -> str:
        return self._base(session_id) + chunk_name(seq)

    def put_chunk(self, session_id: uuid.UUID | str, seq: int, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        key = self.key_of(session_id, seq)
        try:
            # If-None-Match: a chunk is written once; a PUT is atomic, readers never see part of an object
            self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def _keys(self, session_id: uuid.UUID | str, limit: int | None = None) -> list[str]:
        base = self._base(session_id)
        keys: list[str] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
        if limit is not None:
            request["MaxKeys"] = limit
        while True:
            page = self.client.list_objects_v2(**request)
            keys.extend(item["Key"] for item in page.get("Contents", []))
            if limit is not None or not page.get("IsTruncated"):
                return keys
            request["ContinuationToken"] = page["NextContinuationToken"]

    def chunks(self, session_id: uuid.UUID | str) -> list[int]:
        base = self._base(session_id)
        seqs = []
        for key in self._keys(session_id):
            match = _CHUNK_NAME.match(key[len(base) :])
            if match:
                seqs.append(int(match.group(1)))
        return sorted(seqs)

    def read_chunk(self, session_id: uuid.UUID | str, seq: int) -> bytes:
        answer = self.client.get_object(Bucket=self.bucket, Key=self.key_of(session_id, seq))
        return answer["Body"].read()

    def delete(self, session_id: uuid.UUID | str) -> None:
        keys = self._keys(session_id)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
