"""Run storage I/O: one set of functions for a local directory and an object store URI.

`run.storage` is a local directory (a laptop, or a shared NFS mount) or a URI such as
`s3://bucket/prefix`: on a cluster whose nodes share nothing but the network, every file a
run writes (checkpoints, eval points, sample ids) must live where every node and the
driver can reach it. Everything goes through `pyarrow.fs`, as Ray Train's own storage does,
so a path works the same here and in `RunConfig(storage_path=..., storage_filesystem=...)`.

S3-compatible endpoints (MinIO, moto, Ceph) come from the environment:
`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` or `MLFLOW_S3_ENDPOINT_URL` (the first one set);
credentials from the usual AWS variables or the instance's role.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


def is_remote(uri: str | os.PathLike) -> bool:
    """True for an object-store URI (`s3://...`); False for a local path or `file://`."""
    s = str(uri)
    return "://" in s and not s.startswith("file://")


def _local(uri: str | os.PathLike) -> str:
    s = str(uri)
    return os.path.abspath(s[len("file://"):] if s.startswith("file://") else s)


def s3_filesystem():
    """A `pyarrow.fs.S3FileSystem` honouring the endpoint variables (module doc)."""
    from pyarrow import fs

    endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)
    kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    return fs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    from pyarrow import fs

    if not is_remote(uri):
        return fs.LocalFileSystem(), _local(uri)
    s = str(uri)
    if s.startswith("s3://"):
        return s3_filesystem(), s[len("s3://"):].rstrip("/")
    return fs.FileSystem.from_uri(s)  # gs://, hdfs://, ...: pyarrow's own defaults


def ray_storage(uri: str) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig: a local path as it is,
    an s3:// URI as our configured filesystem (endpoint included) and its bucket path."""
    if not is_remote(uri):
        return _local(uri), None
    filesystem, path = resolve(uri)
    return path, filesystem


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...`, keeping a URI's scheme (Path() would turn `s3://b` into `s3:/b`)."""
    if not is_remote(base):
        return os.path.join(str(base), *parts)
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def _info(uri):
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path)


def exists(uri: str | os.PathLike) -> bool:
    from pyarrow import fs

    return _info(uri).type != fs.FileType.NotFound


def is_file(uri: str | os.PathLike) -> bool:
    from pyarrow import fs

    return _info(uri).type == fs.FileType.File


def is_dir(uri: str | os.PathLike) -> bool:
    """A directory (on S3: a prefix with at least one object under it)."""
    from pyarrow import fs

    return _info(uri).type == fs.FileType.Directory


def listdir(uri: str | os.PathLike) -> list[str]:
    """Names of the direct children of directory `uri`, sorted; [] when it does not exist."""
    from pyarrow import fs

    filesystem, path = resolve(uri)
    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def read_bytes(uri: str | os.PathLike) -> bytes:
    filesystem, path = resolve(uri)
    with filesystem.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode()


def write_bytes_atomic(uri: str | os.PathLike, data: bytes) -> None:
    """Readers see the old content or the new, never half: locally a temporary file renamed
    into place; on an object store one PUT (objects appear whole)."""
    if not is_remote(uri):
        path = Path(_local(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    filesystem, path = resolve(uri)
    with filesystem.open_output_stream(path) as f:
        f.write(data)


def write_text_atomic(uri: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(uri, text.encode())


def append_line(uri: str | os.PathLike, line: str) -> None:
    """Append `line` + newline. Object stores cannot append: read, extend, rewrite (for the
    small logs this is used for, one writer at a time)."""
    if not is_remote(uri):
        with open(_local(uri), "a") as f:
            f.write(line + "\n")
        return
    old = read_bytes(uri) if is_file(uri) else b""
    write_bytes_atomic(uri, old + line.encode() + b"\n")


def makedirs(uri: str | os.PathLike) -> None:
    """Create a directory (a no-op on object stores, which have no directories)."""
    if not is_remote(uri):
        os.makedirs(_local(uri), exist_ok=True)


def upload_dir(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy local directory `local`'s content to `uri` (files overwritten, none deleted)."""
    from pyarrow import fs

    filesystem, path = resolve(uri)
    if not is_remote(uri):
        shutil.copytree(local, path, dirs_exist_ok=True)
        return
    fs.copy_files(str(local), path, source_filesystem=fs.LocalFileSystem(), destination_filesystem=filesystem)


def download_dir(uri: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy directory `uri`'s content into local directory `local` (created); returns it."""
    from pyarrow import fs

    filesystem, path = resolve(uri)
    os.makedirs(local, exist_ok=True)
    if is_dir(uri):
        fs.copy_files(path, str(local), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return Path(local)


@contextmanager
def local_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """Directory `uri` as a local path for the block: a local one as it is, a remote one
    downloaded into a temporary directory that is removed afterwards (read-only use)."""
    if not is_remote(uri):
        yield Path(_local(uri))
        return
    with tempfile.TemporaryDirectory(prefix="tunefleet-storage-") as tmp:
        yield download_dir(uri, Path(tmp) / "d")


@contextmanager
def local_file(uri: str | os.PathLike) -> Iterator[Path]:
    """File `uri` as a local path for the block (a remote one downloaded, same base name)."""
    if not is_remote(uri):
        yield Path(_local(uri))
        return
    with tempfile.TemporaryDirectory(prefix="tunefleet-storage-") as tmp:
        path = Path(tmp) / Path(str(uri)).name
        path.write_bytes(read_bytes(uri))
        yield path


def checkpoint_uri(checkpoint) -> str | None:
    """A Ray Train checkpoint's location as a `run.storage`-style string: its local path, or
    `s3://bucket/...` (Ray keeps the path inside the filesystem, without the scheme). A string
    is already such a location (JobResult.checkpoint)."""
    if checkpoint is None or isinstance(checkpoint, str):
        return checkpoint
    filesystem = getattr(checkpoint, "filesystem", None)
    if filesystem is None or filesystem.type_name == "local":
        return checkpoint.path
    return f"{filesystem.type_name}://{checkpoint.path.lstrip('/')}"


@contextmanager
def local_subdir(checkpoint, name: str) -> Iterator[Path | None]:
    """Directory `name` of a Ray Train checkpoint as a local path for the block (downloaded
    from remote storage, without the rest of the checkpoint), or None when it has none."""
    uri = checkpoint_uri(checkpoint)
    if uri is None or not is_dir(join(uri, name)):
        yield None
        return
    with local_dir(join(uri, name)) as path:
        yield path
