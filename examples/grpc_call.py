"""Ad-hoc calls to any appliance RPC through server reflection, without generated stubs or
grpcurl (Debian has none): the Python route with grpcio-reflection, which signer depends on.

    .venv/bin/python examples/grpc_call.py --ca data/tls/ca.pem \\
        --cert data/tls/auditor.pem --key data/tls/auditor.key 127.0.0.1:50051
    .venv/bin/python examples/grpc_call.py --ca data/tls/ca.pem \\
        --cert data/tls/auditor.pem --key data/tls/auditor.key 127.0.0.1:50051 \\
        signer.v1.Audit/GetLatestCheckpoint '{}'

Without a method it lists the services; with one it sends the JSON request and prints the
answer as JSON (unary methods). Reflection needs only a certificate the client CA trusts; the
method itself needs the role of its service (issuer, officer, auditor).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="appliance address host:port")
    parser.add_argument("method", nargs="?", help="Service/Method, e.g. signer.v1.Audit/VerifyLog")
    parser.add_argument("request", nargs="?", default="{}", help="request as JSON (default {})")
    parser.add_argument("--ca", type=Path, required=True, help="CA of the server certificate")
    parser.add_argument("--cert", type=Path, required=True, help="client certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="client private key (PEM)")
    parser.add_argument("--server-name", default="localhost", help="name in the server cert")
    args = parser.parse_args()
    credentials = grpc.ssl_channel_credentials(
        args.ca.read_bytes(), args.key.read_bytes(), args.cert.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(args.target, credentials, options=options) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        if args.method is None:
            for service in database.get_services():
                print(service)
            return 0
        service_name, _, method_name = args.method.partition("/")
        pool = DescriptorPool(database)
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        request = json_format.Parse(args.request, request_class())
        try:
            response = call(request, timeout=30)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
        print(json_format.MessageToJson(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
