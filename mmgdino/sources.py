"""Where the images of a run come from: inputs (files, folders, URIs) listed into keys, manifests (a vocabulary per
image), each image's version (it changes when the file does), and reading an image by its key.

A key is a local image's resolved path (so a relative and an absolute path are one image) or a URI that any pyarrow
filesystem reads (s3://, gs://, file://, ...), kept as given.
"""

import csv
import io
import json
from pathlib import Path

from .errors import ImageReadError, UsageError
from .images import IMAGE_SUFFIXES, load_image


def is_uri(key):
    return "://" in str(key)


def _filesystem(uri):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, missing credentials or filesystem package
        raise UsageError(f"{uri}: cannot open ({str(exc).splitlines()[0]})") from None


def _stat_version(size, mtime_ns):
    return f"{size}-{mtime_ns}"


def version_of(key):
    """A string that changes when the image's file does (its size and modification time)."""
    if not is_uri(key):
        stat = Path(key).stat()
        return _stat_version(stat.st_size, stat.st_mtime_ns)
    filesystem, path = _filesystem(key)
    info = filesystem.get_file_info(path)
    return _stat_version(info.size, info.mtime_ns)


def _listed_uri(item, suffixes):
    from pyarrow import fs

    filesystem, path = _filesystem(item)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise UsageError(f"{item}: no such file or directory")
    infos = [info] if info.type == fs.FileType.File else filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    scheme = item.split("://", 1)[0]
    return [(f"{scheme}://{i.path}", _stat_version(i.size, i.mtime_ns)) for i in sorted(infos, key=lambda i: i.path)
            if i.type == fs.FileType.File and Path(i.path).suffix.lower() in suffixes]  # fmt: skip


def list_images(inputs, suffixes=IMAGE_SUFFIXES, uris=True):
    """[(key, version)] of every image under the inputs: files as given, folders searched recursively, each image
    once. UsageError for a missing input, or for a URI when `uris` is False (one line naming it)."""
    found = []
    for item in inputs:
        if is_uri(item):
            if not uris:
                raise UsageError(f"{item}: URIs need --ray")
            found += _listed_uri(item, suffixes)
            continue
        path = Path(item)
        if path.is_dir():
            files = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in suffixes and p.is_file()]
        elif path.exists():
            files = [path]
        else:
            raise UsageError(f"{item}: no such file or directory")
        found += [(str(p.resolve()), version_of(p)) for p in files]
    return list(dict(found).items())


def read_manifest(path):
    """[(image key, [labels])] from a JSON Lines file ({"image": ..., "labels": [...]}), a CSV file with an `image`
    and a `labels` column (labels separated by ";") or a Parquet file with those columns. Relative image paths are
    relative to the manifest and become resolved keys; URIs stay as they are."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--manifest {path}: no such file")
    rows = []
    try:
        if path.suffix.lower() == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UsageError("a Parquet --manifest needs pyarrow: pip install pyarrow") from None
            table = pq.read_table(path, columns=["image", "labels"]).to_pylist()
            rows = [(row["image"], list(row["labels"])) for row in table]
        elif path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                rows = [(row["image"], [x for x in row["labels"].split(";") if x.strip()]) for row in csv.DictReader(f)]
        else:
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            rows = [(row["image"], row["labels"]) for row in map(json.loads, lines)]
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"--manifest {path}: each entry needs an image and its labels ({exc})") from None
    if not rows:
        raise UsageError(f"--manifest {path}: no entries")
    return [(image if is_uri(image) else str((path.parent / image).resolve()), labels) for image, labels in rows]


def read_image(key):
    """An upright RGB PIL image from a local path or a URI; ImageReadError naming it otherwise."""
    from PIL import Image

    if not is_uri(key):
        return load_image(key)
    try:
        filesystem, path = _filesystem(key)
        with filesystem.open_input_stream(path) as stream:
            data = stream.read()
        image = Image.open(io.BytesIO(data))
        image.load()
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{key}: cannot read the image ({str(exc).splitlines()[0]})") from None
    return load_image(image, name=key)
