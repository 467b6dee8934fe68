"""Named, typed n-dimensional arrays, as an inference protocol carries them.

The datatype names are those of the Open Inference Protocol (KServe v2, Triton):
`BYTES` holds an object array of `bytes`, every other datatype the numpy dtype of
`NUMPY_DTYPES`, little-endian as the protocol sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
DATATYPES: frozenset[str] = frozenset(NUMPY_DTYPES) | {BYTES}


@dataclass(frozen=True, eq=False)
class Tensor:
    """A named, typed n-dimensional array, as a protocol carries it."""

    name: str
    datatype: str  # a v2 datatype name, one of DATATYPES
    data: np.ndarray  # numeric: the dtype of NUMPY_DTYPES[datatype]; BYTES: an object array of `bytes`
    binary: bool = False  # for an input: whether it came as binary data (not JSON); unused for outputs

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:  # the data may be megabytes
        return f"Tensor({self.name!r}, {self.datatype}, shape={self.shape}, binary={self.binary})"


def tensor(name: str, datatype: str, data: np.ndarray) -> Tensor:
    """A tensor of `data`, which must already have the dtype of `datatype` (ValueError if not)."""
    check_fits(name, datatype, data)
    return Tensor(name, datatype, data)


def check_fits(name: str, datatype: str, data: np.ndarray) -> None:
    """Raise ValueError unless `data` is an array that `datatype` describes."""
    if not isinstance(data, np.ndarray):
        raise ValueError(f"tensor {name!r}: data must be a numpy array, got {type(data).__name__}")
    if datatype == BYTES:
        if data.dtype != np.object_:
            raise ValueError(f"tensor {name!r}: BYTES data must be an object array of bytes, got dtype {data.dtype}")
        kinds = set(map(type, data.ravel()))
        if kinds - {bytes}:
            found = ", ".join(sorted(k.__name__ for k in kinds - {bytes}))
            raise ValueError(f"tensor {name!r}: BYTES elements must be bytes, found {found}")
        return
    expected = NUMPY_DTYPES.get(datatype)
    if expected is None:
        raise ValueError(f"tensor {name!r}: unknown datatype {datatype!r}; one of {', '.join(sorted(DATATYPES))}")
    if data.dtype.newbyteorder("<") != expected:
        raise ValueError(f"tensor {name!r}: {datatype} needs dtype {expected}, got {data.dtype}")
