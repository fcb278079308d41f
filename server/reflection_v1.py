"""The messages of gRPC server reflection v1 (`grpc.reflection.v1`), for a server that offers it.

grpcio-reflection ships only `grpc_reflection.v1alpha`. The v1 protocol is the same protocol
under a new package name: same messages, same field numbers, so the same bytes on the wire. This
module registers `grpc/reflection/v1/reflection.proto` in the default descriptor pool, built from
the v1alpha file with only its name, package and type references changed, so that

- the server's v1 method (de)serializes real `grpc.reflection.v1` messages, and
- reflection itself can describe the v1 service (`file_containing_symbol` on
  `grpc.reflection.v1.ServerReflection`, which `grpcurl describe` asks for).

If grpcio-reflection one day ships `grpc_reflection.v1`, that module is used instead.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
FILE_NAME = "grpc/reflection/v1/reflection.proto"
_PACKAGE = "grpc.reflection.v1"
_ALPHA = "grpc.reflection.v1alpha"


def _renamed(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The v1alpha file as v1: name, package, and every `.grpc.reflection.v1alpha.X` reference."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fdp)
    out.name, out.package = FILE_NAME, _PACKAGE
    out.ClearField("options")  # language options (java_package, ...) name the v1alpha package

    def fix(name: str) -> str:
        return name.replace(f".{_ALPHA}.", f".{_PACKAGE}.", 1) if name.startswith(f".{_ALPHA}.") else name

    def walk(msg: descriptor_pb2.DescriptorProto) -> None:
        for f in msg.field:
            if f.type_name:
                f.type_name = fix(f.type_name)
        for nested in msg.nested_type:
            walk(nested)

    for msg in out.message_type:
        walk(msg)
    for svc in out.service:
        for m in svc.method:
            m.input_type, m.output_type = fix(m.input_type), fix(m.output_type)
    return out


def message_classes() -> tuple[type, type]:
    """(ServerReflectionRequest, ServerReflectionResponse) of grpc.reflection.v1."""
    try:
        from grpc_reflection.v1 import reflection_pb2 as v1  # type: ignore[import-not-found]

        return v1.ServerReflectionRequest, v1.ServerReflectionResponse
    except ImportError:
        pass
    from grpc_reflection.v1alpha import reflection_pb2 as alpha

    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        fdp = descriptor_pb2.FileDescriptorProto()
        alpha.DESCRIPTOR.CopyToProto(fdp)
        pool.Add(_renamed(fdp))
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
                 for name in ("ServerReflectionRequest", "ServerReflectionResponse"))
