"""Issue DCC QR codes from a backend in Python: records in, ``HC1:`` strings and PNGs out.

With the dev daemon running (``make serve``)::

    .venv/bin/python examples/issue_from_python.py examples/records-vn.jsonl --out-dir out/qr/

For another appliance pass ``--target HOST:PORT`` (repeat it for round robin over several
appliances given as IP:port) and the mTLS files of an issuer identity. Key rotations during the
run are followed: the remaining certificates are rebuilt with the new kid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from signer.client import SignerClient, TlsFiles
from signer.dcc import issue_records
from signer.dcc.qr import write_qr

DEV_TLS = Path(__file__).resolve().parent.parent / "data" / "tls"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path, help="JSONL file, one vaccination record a line")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--target", action="append", default=[], help="HOST:PORT (repeatable)")
    parser.add_argument("--ca", type=Path, default=DEV_TLS / "ca.pem")
    parser.add_argument("--cert", type=Path, default=DEV_TLS / "issuer.pem")
    parser.add_argument("--key", type=Path, default=DEV_TLS / "issuer.key")
    args = parser.parse_args()

    lines = args.records.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    tls = TlsFiles(ca=args.ca, cert=args.cert, key=args.key)
    targets = args.target or ["127.0.0.1:50051"]
    with SignerClient(targets, tls=tls, server_name="localhost") as client:
        # Validates every record first (nothing is signed if one is wrong), then signs in
        # batches and checks every signature against the DSC before encoding.
        hc1s = issue_records(records, client.dcc_signer())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for number, hc1 in enumerate(hc1s, start=1):
        write_qr(hc1, args.out_dir / f"{number:05d}.png")
        print(hc1)


if __name__ == "__main__":
    main()
