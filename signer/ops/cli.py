"""``signer init`` and ``signer config check``: operator commands that start no daemon.

Exit codes: 0 usable / done; 78 the configuration or a file it names is unusable (every problem
on its own ``signer: `` line); 1 the HSM refused; 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from signer.cli_exit import PREFIX, ExitCode, bounded, note
from signer.config import load
from signer.errors import ConfigError
from signer.ops.bootstrap import default_public_key_file, init_appliance, next_steps
from signer.ops.config_check import ConfigProblems, check_config


def add_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``signer init``."""
    text = (
        "prepare a production appliance on an initialised token: check the configuration,"
        " create the audit key if missing, export its public key (idempotent)"
    )
    init = commands.add_parser("init", help="production bootstrap", description=text)
    init.add_argument("--config", type=Path, required=True, help="production signer TOML config")
    init.add_argument(
        "--pubkey-out",
        type=Path,
        help="where to export the audit public key (default: audit-public-key.pem beside"
        " the [audit] dir)",
    )
    init.set_defaults(func=_init)


def add_config_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``check`` under ``signer config``."""
    check = subparsers.add_parser(
        "check",
        help="validate a config and the files it names without starting anything",
        description="Validate a configuration and every file it names (PKCS#11 module, PIN,"
        " TLS, CSCA certificate, record store, audit folder). Exit 0 usable, 78 with every"
        " problem listed.",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="signer TOML config")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    report = check_config(args.file)
    for text in report.notes:
        note(text)
    if not report.ok:
        return _problems(report.problems)
    print(f"configuration {report.source} is usable; checked: {', '.join(report.checked)}")
    return ExitCode.OK


def _init(args: argparse.Namespace) -> int:
    try:
        settings = load(args.config)
        report = init_appliance(settings, args.pubkey_out or default_public_key_file(settings))
    except ConfigProblems as exc:
        return _problems(exc.problems)
    except ConfigError as exc:
        return _problems(str(exc).splitlines())
    made = "created" if report.created else "exists"
    print(f"token {report.token_label!r}: audit key {report.audit_key_label!r} {made}")
    print(f"  key id (CKA_ID):        {report.audit_key_id}")
    print(f"  public key:             {report.public_key_file}")
    print(f"  SHA-256 of its SPKI:    {report.fingerprint}")
    print(f"  signed-note verifier:   {report.note_verifier}")
    print("next steps:")
    for step in next_steps(report):
        print(f"  {step}")
    return ExitCode.OK


def _problems(lines: list[str]) -> int:
    """Print every problem on its own prefixed line; the configuration exit code."""
    for line in lines:
        print(PREFIX + bounded(line), file=sys.stderr)
    return ExitCode.CONFIG
