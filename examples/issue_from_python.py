"""Issue DCC QR codes from a backend in Python: JSONL records in, HC1 strings and PNGs out.

With the dev daemon running (``make serve``)::

    .venv/bin/python examples/issue_from_python.py examples/records-vn.jsonl \\
        --out out/issued.jsonl --qr-dir out/qr/ --jobs 2

This is what ``signer dcc issue --batch`` does, through the library: ``--jobs`` worker
processes each open their own connection (made by :func:`connect`, which therefore lives at
module level: worker processes are started fresh and import it), output lines come in input
order, one per record (``hc1`` or ``error`` with the field at fault), and running the same
command again continues where an interrupted run stopped. For a few records already in memory,
``signer.dcc.issue_records(records, client.dcc_signer())`` returns the ``HC1:`` strings
directly (all or nothing).

For another appliance pass ``--target HOST:PORT`` (repeat it for round robin over several
appliances given as IP:port) and the mTLS files of an issuer identity. Key rotations during the
run are followed: the certificates not yet signed are rebuilt with the new kid.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from signer.client import DccSigner, SignerClient, TlsFiles
from signer.dcc.batch_worker import BatchOptions
from signer.dcc.pipeline import issue_batch

DEV_TLS = Path(__file__).resolve().parent.parent / "data" / "tls"


def connect(targets: list[str], tls: TlsFiles) -> DccSigner:
    """The signer of one worker process: its own connection to the appliances."""
    return SignerClient(targets, tls=tls, server_name="localhost").dcc_signer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path, help="JSONL file, one record a line")
    parser.add_argument("--out", type=Path, required=True, help="JSONL output, one line a record")
    parser.add_argument("--qr-dir", type=Path, help="write a PNG per certificate here")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--target", action="append", default=[], help="HOST:PORT (repeatable)")
    parser.add_argument("--ca", type=Path, default=DEV_TLS / "ca.pem")
    parser.add_argument("--cert", type=Path, default=DEV_TLS / "issuer.pem")
    parser.add_argument("--key", type=Path, default=DEV_TLS / "issuer.key")
    args = parser.parse_args()

    tls = TlsFiles(ca=args.ca, cert=args.cert, key=args.key)
    targets = args.target or ["127.0.0.1:50051"]
    summary = issue_batch(
        args.records,
        args.out,
        functools.partial(connect, targets, tls),
        options=BatchOptions(qr_dir=args.qr_dir),
        jobs=args.jobs,
        notify=print,
    )
    print(json.dumps(summary.to_json(), indent=2))
    # Every record is checked against the eHN value sets before it is signed; a bad one gets
    # an output line {"line": N, "field": ..., "error": ...} and the rest is issued.
    for line in args.out.read_text(encoding="utf-8").splitlines()[:3]:
        record = json.loads(line)
        print(record["line"], record.get("hc1", record.get("error", ""))[:60])


if __name__ == "__main__":
    main()
