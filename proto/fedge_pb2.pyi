# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AdapterSpec(_message.Message):
    __slots__ = ("kind", "targets", "rank", "alpha", "num_classes", "multilabel")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MULTILABEL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    rank: int
    alpha: float
    num_classes: int
    multilabel: bool
    def __init__(self, kind: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., rank: _Optional[int] = ..., alpha: _Optional[float] = ..., num_classes: _Optional[int] = ..., multilabel: _Optional[bool] = ...) -> None: ...

class AdapterBundle(_message.Message):
    __slots__ = ("format", "format_version", "backbone_hash", "specs", "tensors", "tensors_sha256", "version")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_HASH_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    format: str
    format_version: int
    backbone_hash: str
    specs: _containers.RepeatedCompositeFieldContainer[AdapterSpec]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    tensors_sha256: str
    version: int
    def __init__(self, format: _Optional[str] = ..., format_version: _Optional[int] = ..., backbone_hash: _Optional[str] = ..., specs: _Optional[_Iterable[_Union[AdapterSpec, _Mapping]]] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., tensors_sha256: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("device_id", "token", "batch_id", "samples", "have_version")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    token: str
    batch_id: int
    samples: Tensor
    have_version: int
    def __init__(self, device_id: _Optional[str] = ..., token: _Optional[str] = ..., batch_id: _Optional[int] = ..., samples: _Optional[_Union[Tensor, _Mapping]] = ..., have_version: _Optional[int] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("accepted", "latest_version")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    latest_version: int
    def __init__(self, accepted: _Optional[int] = ..., latest_version: _Optional[int] = ...) -> None: ...

class ParametersRequest(_message.Message):
    __slots__ = ("device_id", "token", "have_version")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    token: str
    have_version: int
    def __init__(self, device_id: _Optional[str] = ..., token: _Optional[str] = ..., have_version: _Optional[int] = ...) -> None: ...

class ParametersReply(_message.Message):
    __slots__ = ("version", "changed", "params")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    version: int
    changed: bool
    params: AdapterBundle
    def __init__(self, version: _Optional[int] = ..., changed: _Optional[bool] = ..., params: _Optional[_Union[AdapterBundle, _Mapping]] = ...) -> None: ...
