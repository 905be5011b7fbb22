"""The floor under the daemon's small-request speed: the least a Python gRPC server can do.

A ``grpc.aio`` server with the appliance's mutual TLS and its ``Signing`` API, in one process,
signing each digest in that process with one python-pkcs11 session on the appliance's token:
no worker processes, no audit log, no key registry, no checks, no metrics, no access log. What
it serves per second is what Python gRPC and the HSM give together before anything the daemon
adds; ``small_requests.py`` measures it beside the daemon and prints daemon / floor. It is a
yardstick, never a way to run signer: it records nothing and checks nothing.

Run alone: ``.venv/bin/python benchmarks/grpc_floor.py --config APPLIANCE/signer.toml --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY_LABEL = "dev-vaccination"


async def serve(config: str, port: int) -> None:
    """Serve ``Signing`` on 127.0.0.1:``port`` until cancelled."""
    import grpc
    from pkcs11 import Attribute

    from signer.config import load
    from signer.hsm import keystore
    from signer.hsm.mechanisms import signing_mechanism
    from signer.hsm.token import load_module, open_session
    from signer.v1 import signing_pb2, signing_pb2_grpc

    settings = load(config)
    session = open_session(settings.hsm, load_module(settings.hsm))
    key_id = keystore.key_id_by_label(session, KEY_LABEL)
    key = cast(Any, keystore.private_key(session, key_id).copy({Attribute.TOKEN: False}))
    mechanism = signing_mechanism()
    spki = keystore.public_key_spki(session, key_id)
    kid = hashlib.sha256(spki).digest()[:8]

    class Floor(signing_pb2_grpc.SigningServicer):
        async def GetSigningKey(self, request: Any, context: Any) -> Any:
            return signing_pb2.SigningKey(
                profile=request.profile, kid=kid, algorithm="ES256", public_key_spki=spki
            )

        async def SignBatch(self, request: Any, context: Any) -> Any:
            packed = request.packed_digests
            if not packed:
                signatures = [key.sign(d, mechanism=mechanism) for d in request.digests]
                return signing_pb2.SignBatchResponse(
                    signatures=signatures, kid=kid, request_id=request.request_id
                )
            digests = (packed[i : i + 32] for i in range(0, len(packed), 32))
            joined = b"".join(key.sign(d, mechanism=mechanism) for d in digests)  # raw r||s
            return signing_pb2.SignBatchResponse(
                packed_signatures=joined, kid=kid, request_id=request.request_id
            )

    tls = settings.server.tls
    assert tls.cert is not None and tls.key is not None and tls.client_ca is not None
    credentials = grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.client_ca.read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    signing_pb2_grpc.add_SigningServicer_to_server(Floor(), server)  # type: ignore[no-untyped-call]
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0)
        session.close()


def run(config: str, port: int) -> None:
    """Entry point of the floor server's process."""
    asyncio.run(serve(config, port))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="an appliance's signer.toml (dev setup)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run(args.config, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
