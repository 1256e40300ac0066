"""Type stubs of the native module (crates/sealtensors-py/src/lib.rs).

python/tests/test_stubs.py checks that these names and signatures match the
compiled module, so the stubs cannot drift silently.
"""

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

_Path = str | os.PathLike[str]

class SealtensorsError(Exception): ...
class InvalidFileError(SealtensorsError): ...
class NotAuthenticError(SealtensorsError): ...
class NoKeyError(SealtensorsError): ...
class ConfigError(SealtensorsError): ...
class OutputError(SealtensorsError): ...
class PolicyDeniedError(SealtensorsError): ...

class File:
    def __init__(
        self,
        path: _Path,
        identities: Sequence[_Path] = ...,
        trusted: Sequence[str] = ...,
        passphrase: str | None = None,
        require_encrypted: bool = False,
        require_signed: bool = False,
        licence: str | None = None,
        runtime: tuple[str, str] | None = None,
        framework: tuple[str, str] | None = None,
        requested: Sequence[str] | None = None,
    ) -> None: ...
    def keys(self) -> list[str]: ...
    def offset_keys(self) -> list[str]: ...
    def metadata(self) -> dict[str, str] | None: ...
    def is_sealed(self) -> bool: ...
    def info(self, name: str) -> tuple[str, list[int], int, bool]: ...
    def authenticity(self) -> tuple[str, str | None]: ...
    def read(self, name: str) -> npt.NDArray[np.uint8]: ...
    def read_range(self, name: str, start: int, end: int) -> npt.NDArray[np.uint8]: ...
    def read_many(self, names: list[str]) -> list[npt.NDArray[np.uint8]]: ...
    def stream(
        self,
        names: Sequence[str] | None = None,
        pool_bytes: int | None = None,
        alloc: Callable[[int], npt.NDArray[np.uint8]] | None = None,
    ) -> TensorStream: ...

class TensorStream:
    def __iter__(self) -> Iterator[tuple[str, npt.NDArray[np.uint8]]]: ...
    def __next__(self) -> tuple[str, npt.NDArray[np.uint8]]: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...

def enter_load_scope() -> None: ...
def exit_load_scope() -> None: ...
def stream_files(
    files: Sequence[File],
    pieces: Sequence[tuple[int, str]],
    pool_bytes: int | None = None,
    alloc: Callable[[int], npt.NDArray[np.uint8]] | None = None,
) -> TensorStream: ...

class Writer:
    def __init__(
        self,
        path: _Path,
        tensors: Sequence[tuple[str, str, Sequence[int]]],
        metadata: dict[str, str] | None = None,
        recipients: Sequence[str] = ...,
        sign_key: _Path | None = None,
        passphrase: str | None = None,
        encrypt: Sequence[str] | None = None,
        cipher: str = "aes-256-gcm",
        chunk_size: int = 1048576,
        model_id: str = "",
        model_version: str = "",
        expires: int | None = None,
        overwrite: bool = False,
        policy: str | None = None,
    ) -> None: ...
    def order(self) -> list[str]: ...
    def write(self, data: npt.NDArray[np.uint8]) -> None: ...
    def finish(self) -> None: ...

def seal(
    input: _Path,
    output: _Path,
    recipients: Sequence[str] = ...,
    sign_key: _Path | None = None,
    passphrase: str | None = None,
    encrypt: Sequence[str] | None = None,
    cipher: str = "aes-256-gcm",
    chunk_size: int = 1048576,
    model_id: str = "",
    model_version: str = "",
    expires: int | None = None,
    overwrite: bool = False,
    policy: str | None = None,
) -> None: ...
def convert_cryptotensors(
    input: _Path,
    output: _Path,
    identities: Sequence[_Path] = ...,
    trusted: Sequence[str] = ...,
    recipients: Sequence[str] = ...,
    sign_key: _Path | None = None,
    cipher: str = "aes-256-gcm",
    chunk_size: int = 1048576,
    model_id: str = "",
    model_version: str = "",
    expires: int | None = None,
    overwrite: bool = False,
    policy: str | None = None,
) -> None:
    """Convert a CryptoTensors file or folder into a sealtensors file or model.

    The input is opened with ``identities`` (their key file, holding the oct
    key) and ``trusted`` (their signer's public key: the key file works), its
    signature, policy and every chunk checked, and its plaintext re-sealed for
    ``recipients`` without touching the disk.
    """

def oms_sign(
    folder: _Path, key: _Path, signature: _Path | None = None, overwrite: bool = False
) -> str:
    """Write an OpenSSF model signing bundle over a model folder.

    ``key`` is an ECDSA P-256 private key (PEM); the bundle (default:
    ``model.sig`` inside the folder) is what ``model_signing verify key``
    accepts. Returns the bundle's path.
    """

def oms_verify(
    folder: _Path, signature: _Path, trusted: Sequence[_Path], allow_uncovered: bool = False
) -> tuple[str, int, list[str]]:
    """Verify a model folder against an OpenSSF model signing bundle.

    The bundle must be signed by one of the ``trusted`` PEM public keys and
    every file it lists must match; a file in the folder that it does not
    cover fails it too (``NotAuthenticError``), unless ``allow_uncovered``.
    Returns (signer, files covered, files in the folder it does not cover).
    """

def unseal(
    input: _Path,
    output: _Path,
    identities: Sequence[_Path] = ...,
    trusted: Sequence[str] = ...,
    passphrase: str | None = None,
    require_signed: bool = False,
    overwrite: bool = False,
) -> None: ...
def verify(
    path: _Path,
    identities: Sequence[_Path] = ...,
    trusted: Sequence[str] = ...,
    passphrase: str | None = None,
    require_signed: bool = False,
) -> list[tuple[str, str]]: ...
def keygen(
    path: _Path, kind: str = "x25519", kid: str | None = None, overwrite: bool = False
) -> str: ...
def forget_released_keys() -> None:
    """Drop, and wipe, every model key a key broker released to this process."""

def is_remote(path: _Path) -> bool:
    """Whether `path` names a remote object (s3://, gs://, az://, https://...)."""

def weight_files(folder: _Path) -> list[str]:
    """The weight files of a model folder, local or a folder URL, sorted."""

def check_loaded(folder: _Path, loaded: Sequence[_Path]) -> None:
    """In a load scope: refuse a load that missed one of the sealed model's weight files."""

def read_small(path: _Path, max_bytes: int) -> bytes | None:
    """A small file (a model's config) read whole, local or at a URL; None when absent."""

def policy_template(
    template: str,
    not_after: str | None = None,
    machines: Sequence[str] = ...,
    frameworks: Sequence[str] = ...,
    tensors: Sequence[str] = ...,
) -> str: ...
