"""Where the visual side of an example lives on disk.

Two kinds of source:

- raw pixels: ``ImageFolder`` (one file per image id) and ``VideoFrameFolder`` (one folder of
  frame images per video name), found in the folder or in its sub-folders as the releases
  lay them out (COCO's ``val2014/``, NLVR2's ``train/41/``, TVQA's
  ``frames_hq/bbt_frames/<clip>/``). These only resolve and check paths; encoding by the
  CLIP tower belongs to the modeling code.
- precomputed features behind the ``FeatureStore`` protocol: ``get(id)`` returns a float
  array ``[n_tokens, feat_dim]`` (e.g. 36 x 2048 CLIP RN101 grid tokens per image, or
  n_frames x 512 per video). Backends: HDF5 (``{id}/features``, the VL-T5 layout), a folder
  of ``{id}.npz`` files (key ``features``) and one ``.safetensors`` file (one tensor per id).

Every source is a context manager: leaving ``with open_visual_source(...) as source`` (or
``source.close()``) closes the file a store keeps open (HDF5, safetensors), so the file
can be rewritten or removed afterwards even while an exception from inside is kept.

Nothing is unpickled: ``.npz`` files are read with ``allow_pickle=False``. A file that its
reader cannot read (an image Pillow does not know, a broken HDF5, safetensors or npz file)
is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import h5py
import numpy as np
from PIL import Image
from safetensors import SafetensorError, safe_open

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class MissingVisualError(LookupError):
    """A visual id is not in a store; the message names the id and the store's path."""

    def __init__(self, visual_id: str, store_path: Path, what: str,
                 searched_below: bool = False) -> None:
        self.visual_id = visual_id
        self.store_path = store_path
        below = f" nor in its sub-folders ({SUBFOLDER_DEPTH} levels)" if searched_below else ""
        super().__init__(f"{what} {visual_id!r} not found in {store_path}{below}")


def files_stamp(paths: Iterable[Path]) -> str:
    """A short digest of each file's name, size and modification time (ns): it changes when
    one of the files is rewritten, without reading them."""
    digest = hashlib.sha256()
    for path in paths:
        status = path.stat()
        digest.update(f"{path.name}|{status.st_size}|{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


class SourceBase:
    """What every visual source shares: ``with source:`` closes it on the way out, and
    ``stamp(id)`` tells whether the files of an id changed since a cache read them."""

    def files_of(self, visual_id: str) -> list[Path]:
        """The files ``visual_id`` is read from; ``MissingVisualError`` when it has none."""
        raise NotImplementedError

    def stamp(self, visual_id: str) -> str:
        """``files_stamp`` of ``files_of(visual_id)``."""
        return files_stamp(self.files_of(visual_id))

    def close(self) -> None:
        """Release the files this source keeps open (none unless a store overrides it)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@runtime_checkable
class FeatureStore(Protocol):
    """Precomputed visual features by image id or video name."""

    path: Path

    def get(self, visual_id: str) -> np.ndarray:
        """Features of one image or video, float ``[n_tokens, feat_dim]``."""
        ...

    def __contains__(self, visual_id: object) -> bool: ...

    def close(self) -> None: ...

    def stamp(self, visual_id: str) -> str: ...


def _checked_features(array: np.ndarray, visual_id: str, store_path: Path) -> np.ndarray:
    """``array`` as float32 ``[n_tokens, feat_dim]``, or ``ValueError`` naming id and store."""
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"features of {visual_id!r} in {store_path}: expected a float array "
            f"[n_tokens, feat_dim], got {array.dtype} with shape {tuple(array.shape)}"
        )
    return array.astype(np.float32, copy=False)


class H5FeatureStore(SourceBase):
    """An HDF5 file with one dataset ``{id}/features`` per image or video (VL-T5 layout)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = h5py.File(self.path, "r")

    def __contains__(self, visual_id: object) -> bool:
        return isinstance(visual_id, str) and f"{visual_id}/features" in self._file

    def get(self, visual_id: str) -> np.ndarray:
        """Features ``[n_tokens, feat_dim]`` float32."""
        if visual_id not in self:
            raise MissingVisualError(visual_id, self.path, "features of")
        return _checked_features(self._file[f"{visual_id}/features"][()], visual_id, self.path)

    def files_of(self, visual_id: str) -> list[Path]:
        """The one file (rewriting it may change any id's features)."""
        return [self.path]

    def close(self) -> None:
        """Close the HDF5 file (HDF5 refuses to rewrite a file this process holds open)."""
        self._file.close()


class NpzFolderStore(SourceBase):
    """A folder with one ``{id}.npz`` per image or video, holding the array ``features``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotADirectoryError(f"feature folder {self.path} does not exist")

    def __contains__(self, visual_id: object) -> bool:
        return isinstance(visual_id, str) and (self.path / f"{visual_id}.npz").is_file()

    def get(self, visual_id: str) -> np.ndarray:
        """Features ``[n_tokens, feat_dim]`` float32."""
        file_path = self.path / f"{visual_id}.npz"
        if visual_id not in self:
            raise MissingVisualError(visual_id, self.path, "features file of")
        try:
            with np.load(file_path, allow_pickle=False) as archive:
                if "features" not in archive.files:
                    raise ValueError(f"{file_path}: no array 'features' (has {archive.files})")
                return _checked_features(archive["features"], visual_id, file_path)
        except (OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"{file_path}: not a readable .npz file ({error})") from None

    def files_of(self, visual_id: str) -> list[Path]:
        """``{id}.npz``."""
        if visual_id not in self:
            raise MissingVisualError(visual_id, self.path, "features file of")
        return [self.path / f"{visual_id}.npz"]


class SafetensorsFeatureStore(SourceBase):
    """One ``.safetensors`` file with one tensor per image id or video name."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="np")
        self._ids = frozenset(self._file.keys())

    def __contains__(self, visual_id: object) -> bool:
        return visual_id in self._ids

    def get(self, visual_id: str) -> np.ndarray:
        """Features ``[n_tokens, feat_dim]`` float32."""
        if visual_id not in self:
            raise MissingVisualError(visual_id, self.path, "features of")
        return _checked_features(self._file.get_tensor(visual_id), visual_id, self.path)

    def files_of(self, visual_id: str) -> list[Path]:
        """The one file (rewriting it may change any id's features)."""
        return [self.path]

    def close(self) -> None:
        """Drop the file handle (and its memory map)."""
        self._file = None


def open_feature_store(path: Path) -> FeatureStore:
    """The store for ``path``: ``.h5``/``.hdf5`` file, ``.safetensors`` file or npz folder."""
    path = Path(path)
    try:
        if path.suffix in (".h5", ".hdf5"):
            return H5FeatureStore(path)
        if path.suffix == ".safetensors":
            return SafetensorsFeatureStore(path)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path}: not a readable {path.suffix} feature file ({error})") \
            from None
    if path.is_dir():
        return NpzFolderStore(path)
    raise ValueError(f"{path}: not an .h5/.hdf5 file, a .safetensors file or a folder of .npz")


def load_image(path: Path) -> Image.Image:
    """The decoded image in ``path``; ``ValueError`` naming it when Pillow cannot read it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


# How far below a visual folder images and frame folders are searched: the releases'
# layouts are COCO's ``train2014/``, NLVR2's ``<split>/<n>/`` and TVQA's
# ``frames_hq/<show>_frames/<clip>/``.
SUBFOLDER_DEPTH = 3


def _image_folders(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The folders below ``root`` (up to ``SUBFOLDER_DEPTH`` levels) that hold image files.

    The search does not go below such a folder (a video's frame folder, COCO's
    ``val2014/``): each of them is listed only up to its first image.
    """
    found, pending = [], [(root, 0)]
    while pending:
        folder, level = pending.pop()
        subfolders, holds_images = [], False
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():
                        subfolders.append(Path(entry.path))
                    elif os.path.splitext(entry.name)[1].lower() in suffixes:
                        holds_images = True
                        if folder != root:
                            break
        except OSError:  # an unreadable folder holds nothing we can read
            continue
        if holds_images and folder != root:
            found.append(folder)
        elif level < SUBFOLDER_DEPTH:
            pending += [(subfolder, level + 1) for subfolder in subfolders]
    return sorted(found)


class _SubfolderIndex:
    """Name -> path of what lies in the image-holding sub-folders of a folder, built on the
    first lookup (a name missing from the folder itself)."""

    def __init__(self, root: Path, suffixes: tuple[str, ...],
                 names: Callable[[Path], Iterable[tuple[str, Path]]], what: str) -> None:
        self.root, self.suffixes, self.names, self.what = root, suffixes, names, what
        self._paths: dict[str, list[Path]] | None = None

    def find(self, name: str) -> Path | None:
        """The one path of ``name``; ``ValueError`` when two sub-folders hold it."""
        if self._paths is None:
            self._paths = {}
            for folder in _image_folders(self.root, self.suffixes):
                for found_name, path in self.names(folder):
                    self._paths.setdefault(found_name, []).append(path)
        paths = self._paths.get(name, [])
        if len(paths) > 1:
            raise ValueError(f"{self.what} {name!r} is in more than one sub-folder of "
                             f"{self.root}: {paths[0]} and {paths[1]}")
        return paths[0] if paths else None


class ImageFolder(SourceBase):
    """Image files named by image id (``{id}.jpg``/``.jpeg``/``.png``) in one folder or in
    its sub-folders, up to ``SUBFOLDER_DEPTH`` levels down (COCO's ``val2014/``, NLVR2's
    ``train/41/``): an id must name one file."""

    def __init__(self, path: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> None:
        self.path = Path(path)
        self.suffixes = suffixes
        if not self.path.is_dir():
            raise NotADirectoryError(f"image folder {self.path} does not exist")
        self._index = _SubfolderIndex(self.path, suffixes, self._images_in, "image")

    def _images_in(self, folder: Path) -> Iterator[tuple[str, Path]]:
        for file in folder.iterdir():
            if file.suffix.lower() in self.suffixes:
                yield file.stem, file

    def _find(self, image_id: str) -> Path | None:
        for suffix in self.suffixes:
            candidate = self.path / f"{image_id}{suffix}"
            if candidate.is_file():
                return candidate
        return self._index.find(image_id)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self._find(image_id) is not None

    def image_path(self, image_id: str) -> Path:
        """The file of ``image_id``; ``MissingVisualError`` when there is none."""
        found = self._find(image_id)
        if found is None:
            raise MissingVisualError(image_id, self.path, f"image ({'/'.join(self.suffixes)})",
                                     searched_below=True)
        return found

    def files_of(self, visual_id: str) -> list[Path]:
        """The image file."""
        return [self.image_path(visual_id)]


class VideoFrameFolder(SourceBase):
    """One folder per video name, holding its frames as images sorted by file name: in this
    folder or below it, up to ``SUBFOLDER_DEPTH`` levels down (TVQA's
    ``frames_hq/<show>_frames/<clip>/``): a name must name one folder."""

    def __init__(self, path: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> None:
        self.path = Path(path)
        self.suffixes = suffixes
        if not self.path.is_dir():
            raise NotADirectoryError(f"video folder {self.path} does not exist")
        self._index = _SubfolderIndex(self.path, suffixes,
                                      lambda folder: [(folder.name, folder)], "video")

    def _frames(self, vid_name: str) -> list[Path]:
        folder = self.path / vid_name
        if not folder.is_dir():
            folder = self._index.find(vid_name)
        if folder is None:
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in self.suffixes)

    def __contains__(self, vid_name: object) -> bool:
        return isinstance(vid_name, str) and bool(self._frames(vid_name))

    def frame_paths(self, vid_name: str) -> list[Path]:
        """The frames of ``vid_name`` in order; ``MissingVisualError`` when it has none."""
        frames = self._frames(vid_name)
        if not frames:
            raise MissingVisualError(vid_name, self.path, "video frame folder",
                                     searched_below=True)
        return frames

    def files_of(self, visual_id: str) -> list[Path]:
        """Every frame (a frame added or removed changes the stamp too)."""
        return self.frame_paths(visual_id)


VisualSource = FeatureStore | ImageFolder | VideoFrameFolder


def open_visual_source(path: Path, video: bool) -> VisualSource:
    """What a task's ``visual:`` points at: a feature file or a folder of ``.npz`` -> its
    feature store; any other folder -> its images, or its videos' frame folders."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.glob("*.npz"))):
        return open_feature_store(path)
    return VideoFrameFolder(path) if video else ImageFolder(path)
