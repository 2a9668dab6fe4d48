"""Durable result store: final pictures and time-lapses, on disk or in an S3-compatible bucket.

Redis keeps a job's progress and latest frame; what a client downloads at the end is written here too,
so it outlives a Redis restart or eviction. Both sides use it: workers write, the API reads.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from shared.settings import Settings

log = logging.getLogger(__name__)

# One path segment: starts with a letter or digit, so "." / ".." / hidden names can never appear.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_MAX_KEY_CHARS = 512


class InvalidKey(ValueError):
    """A key that could name something outside the store (or that S3 and disks would read differently)."""


def result_key(job_id: str) -> str:
    """Where a job's final PNG lives."""
    return f"{job_id}/result.png"


def timelapse_key(job_id: str) -> str:
    """Where a job's animated WebP time-lapse lives."""
    return f"{job_id}/timelapse.webp"


# A succeeded job's final latent and optimiser state (what `extend` continues from), in its folder.
STATE_FILE = "state.pt"


def state_key(job_id: str) -> str:
    """Where a succeeded job's final painting state lives (swept after `ARTGEN_STATE_TTL_S`)."""
    return f"{job_id}/{STATE_FILE}"


def manifest_key(job_id: str) -> str:
    """Where a succeeded job's manifest (JSON: everything needed to repaint it) lives."""
    return f"{job_id}/manifest.json"


def job_store_keys(job_id: str) -> list[str]:
    """Everything the store may hold of one job (DELETE removes these)."""
    return [result_key(job_id), timelapse_key(job_id), state_key(job_id), manifest_key(job_id)]


def check_key(key: str) -> str:
    """`key` if it is relative, "/"-separated and made of plain segments; InvalidKey otherwise."""
    if not key or len(key) > _MAX_KEY_CHARS:
        raise InvalidKey(f"key must be 1 to {_MAX_KEY_CHARS} characters")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(f"key {key!r} has a bad segment {segment!r} (letters, digits, '.', '_', '-')")
    return key


class ResultStore(Protocol):
    """Bytes by key. `put` replaces whole objects atomically; readers never see half a file."""

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


class DirectoryStore:
    """Files under `root` (a shared volume in compose); writes go to a temp file, then os.replace."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # Segments are plain names, but a symlink inside the root could still point outside it.
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise InvalidKey(f"key {key!r} resolves outside the store")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                # On disk before the rename, so a crash leaves the old file or the new one, never a torn one.
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop the job's folder once it is empty, so deleted jobs leave nothing behind.
        parent = path.parent
        if parent != self.root:
            try:
                parent.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise

    def sweep(self, max_age_s: float, now: float, name: str | None = None) -> int:
        """Remove files (only those called `name`, when given) last written more than `max_age_s` before
        `now`, and folders left empty; how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.is_symlink():
                continue
            for path in folder.iterdir():
                try:
                    if name is not None and path.name != name:
                        continue
                    if path.is_file() and now - path.stat().st_mtime > max_age_s:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:  # deleted meanwhile (a DELETE, another sweeper)
                    continue
            try:
                folder.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise
        return removed


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Store:
    """Objects in an S3-compatible bucket (AWS S3, MinIO, ...), through boto3."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            # Self-hosted servers (MinIO) are addressed by path; virtual hosts need DNS per bucket.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._client.put_object(Bucket=self.bucket, Key=check_key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes | None:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=check_key(key))
        except self._client.exceptions.NoSuchKey:
            return None
        body: bytes = reply["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=check_key(key))
        except ClientError as exc:
            # HEAD has no body, so a missing object shows only as a 404 status.
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        # Deleting a missing key succeeds on S3, as on the directory store.
        self._client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def check(self) -> None:
        """Raise if the bucket is missing or the credentials cannot reach it (for readiness checks)."""
        self._client.head_bucket(Bucket=self.bucket)


def make_store(settings: Settings) -> ResultStore:
    """The store the settings select: a directory (default) or an S3 bucket."""
    if settings.result_store == "directory":
        return DirectoryStore(settings.results_dir)
    if settings.s3_bucket is None:  # the settings validator already refuses this; mypy wants it said
        raise ValueError("ARTGEN_RESULT_STORE=s3 needs ARTGEN_S3_BUCKET")
    return S3Store(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=_reveal(settings.s3_access_key_id),
        secret_access_key=_reveal(settings.s3_secret_access_key),
    )


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
